//! Peak memory (and time) of MAISI-VAE sliding-window decoding at full widths on the CPU (`flex`).
//!
//! `cargo run --release -p text2ct-models --example vae_memory -- LATENT WINDOW [OVERLAP]`
//! e.g. `-- 128,128,32 32,32,16 0.25` decodes a 4 x 128 x 128 x 32 latent (Text2CT's) to a
//! 512 x 512 x 128 volume with a 32 x 32 x 16 latent window. The code path is the one of
//! `text2ct vae decode --window` and `text2ct generate --decode-window` (`Vae::decode_sliding_window_with`);
//! weights are a seeded random init (memory and time do not depend on them). Prints one progress line
//! per window and, at the end, the peak resident set size (`VmHWM` from `/proc/self/status`, Linux).
//! The output is reduced to its mean and HU range so it is computed in full but not written.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::speed;
use text2ct_models::vae::SlidingWindow;
use text2ct_models::{Vae, VaeConfig};

fn triple(s: &str) -> [usize; 3] {
    let v: Vec<usize> = s.split(',').map(|p| p.trim().parse().expect("X,Y,Z")).collect();
    assert_eq!(v.len(), 3, "expected X,Y,Z, got {s}");
    [v[0], v[1], v[2]]
}

/// Resident (`VmRSS:`) or peak (`VmHWM:`) memory in kB, as the lines below print it.
fn status_kb(key: &str) -> Option<u64> {
    match key {
        "VmHWM:" => speed::peak_rss_bytes(),
        _ => speed::rss_bytes(),
    }
    .map(|b| b / 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: vae_memory LATENT_X,Y,Z WINDOW_X,Y,Z [OVERLAP]");
        std::process::exit(2);
    }
    let [x, y, z] = triple(&args[0]);
    let window = triple(&args[1]);
    let overlap: f64 = args.get(2).map(|s| s.parse().expect("overlap")).unwrap_or(0.25);
    let threads = speed::current_threads();
    let dev = Device::flex();
    let cfg = VaeConfig::maisi();
    let vae = Vae::new(&cfg, 0, &dev).expect("init");
    let rss_model = status_kb("VmRSS:").unwrap_or(0);
    let n = 4 * x * y * z;
    let data: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 2000) as f32 / 1000.0 - 1.0).collect();
    let lat = Tensor::<5>::from_data(TensorData::new(data, [1, 4, x, y, z]), &dev);
    println!(
        "latent 4x{x}x{y}x{z} -> image {}x{}x{}, window {:?} (image {:?}), overlap {overlap}, threads {threads}, RSS after model init {:.0} MB",
        4 * x,
        4 * y,
        4 * z,
        window,
        window.map(|w| 4 * w),
        rss_model as f64 / 1024.0
    );
    let t0 = Instant::now();
    let mut last = Instant::now();
    let out = vae
        .decode_sliding_window_with(lat, &SlidingWindow::gaussian(window, overlap), &mut |done, total| {
            if done == total || last.elapsed().as_secs_f64() > 20.0 {
                last = Instant::now();
                println!(
                    "  window {done}/{total}  {:.0} s  RSS {:.0} MB  peak {:.0} MB",
                    t0.elapsed().as_secs_f64(),
                    status_kb("VmRSS:").unwrap_or(0) as f64 / 1024.0,
                    status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0
                );
            }
        })
        .expect("decode");
    let dims = out.dims();
    let vals = out.into_data().try_into_vec::<f32>().expect("f32 output");
    let secs = t0.elapsed().as_secs_f64();
    let mean = vals.iter().map(|v| *v as f64).sum::<f64>() / vals.len() as f64;
    let finite = vals.iter().all(|v| v.is_finite());
    println!(
        "decoded {dims:?} in {secs:.1} s (mean {mean:.4}, all finite: {finite}); peak RSS {:.0} MB ({:.2} GiB)",
        status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0,
        status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0 / 1024.0
    );
}
