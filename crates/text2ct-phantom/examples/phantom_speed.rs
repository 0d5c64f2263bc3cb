//! Generation speed: `cargo run --release -p text2ct-phantom --example phantom_speed [threads]`.
//! Prints scans/s at 64x64x32 and at 512x512x128 (same field of view), parameters + voxels +
//! report, without writing files.
use std::time::Instant;
use text2ct_phantom::{generate_scan, PhantomConfig};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    println!("threads: {}", pool.current_num_threads());
    for (dims, n) in [([64usize, 64, 32], 40u64), ([512, 512, 128], 3)] {
        let cfg = PhantomConfig::with_dims(dims);
        // Warm up.
        pool.install(|| generate_scan(&cfg, 1000).unwrap());
        let t = Instant::now();
        for i in 0..n {
            let s = pool.install(|| generate_scan(&cfg, i).unwrap());
            std::hint::black_box(s.volume.data()[0]);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "{}x{}x{}: {:.2} scans/s ({:.3} s/scan, {} scans, default prevalence)",
            dims[0],
            dims[1],
            dims[2],
            n as f64 / dt,
            dt / n as f64,
            n
        );
    }
}
