//! Time MAISI-VAE encode (mean) and decode at full widths on the CPU (`flex`) backend.
//!
//! `cargo run --release -p text2ct-models --example vae_speed -- 64,64,32 [128,128,64 ...]`
//! (sizes are image extents X,Y,Z; weights are a seeded random init: speed does not depend on them).
//! `text2ct bench vae --size X,Y,Z --splits 1` times the same work (inputs from the same
//! `text2ct_models::speed`) and reports peak memory too.

#[path = "common/mod.rs"]
#[allow(dead_code)] // best_of_3 is not used here
mod common;

use burn::tensor::Device;
use text2ct_models::speed::{self, sync, timed};
use text2ct_models::{Vae, VaeConfig};

fn main() {
    let sizes = common::shapes_from_args("size X,Y,Z", vec![[64, 64, 32]]);
    let dev = Device::flex();
    let cfg = VaeConfig::maisi();
    let vae = Vae::new(&cfg, 0, &dev).expect("init");
    println!("threads: {}", speed::current_threads());
    for [x, y, z] in sizes {
        let img = speed::vae_image(&cfg, [x, y, z], &dev);
        let (mu, te) = timed(|| {
            let mu = vae.encode_mean(img);
            sync(&mu);
            mu
        });
        let mu_dims = mu.dims();
        let (out, td) = timed(|| {
            let out = vae.decode(mu);
            sync(&out);
            out
        });
        println!(
            "{x}x{y}x{z}: encode {te:.2} s -> {mu_dims:?}, decode {td:.2} s -> {:?}, total {:.2} s",
            out.dims(),
            te + td
        );
    }
}
