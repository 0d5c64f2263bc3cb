//! Time MAISI-VAE encode (mean) and decode at full widths on the CPU (`flex`) backend.
//!
//! `cargo run --release -p text2ct-models --example vae_speed -- 64,64,32 [128,128,64 ...]`
//! (sizes are image extents X,Y,Z; weights are a seeded random init: speed does not depend on them).

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::{Vae, VaeConfig};

fn main() {
    let sizes: Vec<[usize; 3]> = std::env::args()
        .skip(1)
        .map(|a| {
            let v: Vec<usize> = a.split(',').map(|s| s.trim().parse().expect("size X,Y,Z")).collect();
            [v[0], v[1], v[2]]
        })
        .collect();
    let sizes = if sizes.is_empty() { vec![[64, 64, 32]] } else { sizes };
    let dev = Device::flex();
    let vae = Vae::new(&VaeConfig::maisi(), 0, &dev).expect("init");
    println!("threads: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    for [x, y, z] in sizes {
        let n = x * y * z;
        let data: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0).collect();
        let img = Tensor::<5>::from_data(TensorData::new(data, [1, 1, x, y, z]), &dev);
        let t = Instant::now();
        let mu = vae.encode_mean(img);
        let mu_dims = mu.dims();
        let _ = mu.clone().into_data();
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = vae.decode(mu);
        let od = out.dims();
        let _ = out.into_data();
        let td = t.elapsed().as_secs_f64();
        println!("{x}x{y}x{z}: encode {te:.2} s -> {mu_dims:?}, decode {td:.2} s -> {od:?}, total {:.2} s", te + td);
    }
}
