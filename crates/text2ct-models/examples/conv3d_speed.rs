//! GFLOP/s of burn's `flex` conv3d (3x3x3, padding 1) and of `text2ct_models::blocks::conv3d_forward`
//! (which takes an im2col matrix product where burn's per-call kernel re-ordering dominates, and
//! the AVX-512 / AVX2 direct convolution of `text2ct_models::directconv` for larger outputs) at the
//! shapes of MAISI-VAE decoding and the diffusion U-Net, to set against the machine's f32 GEMM peak.
//!
//! `cargo run --release -p text2ct-models --example conv3d_speed [-- C_IN,C_OUT,X,Y,Z ...]`

use burn::nn::conv::Conv3dConfig;
use burn::nn::PaddingConfig3d;
use burn::tensor::{Device, Distribution, Tensor};
use text2ct_models::blocks::{conv3d_forward, conv3d_im2col};
use text2ct_models::directconv::{conv3d_direct_with, Isa};

#[path = "common/mod.rs"]
mod common;

fn main() {
    // 32->32 at 32^3 (the rust-ml-stack.md reference point); the VAE decoder's full-resolution
    // level (64 ch) and its 128-ch level on a 32x32x16-latent window; a U-Net level.
    let shapes = common::shapes_from_args(
        "C_IN,C_OUT,X,Y,Z",
        vec![[32, 32, 32, 32, 32], [64, 64, 64, 64, 32], [128, 128, 64, 64, 32], [256, 256, 16, 16, 8]],
    );
    let dev = Device::flex();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "| conv3d 3x3x3 ({threads} threads) | GFLOP | burn ms (best of 3) | burn GFLOP/s | im2col product ms | im2col GFLOP/s | conv3d_forward ms | conv3d_forward GFLOP/s | direct AVX2 ms | direct AVX2 GFLOP/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for [ci, co, x, y, z] in shapes {
        let conv = Conv3dConfig::new([ci, co], [3, 3, 3]).with_padding(PaddingConfig3d::Explicit(1, 1, 1)).init(&dev);
        let input = Tensor::<5>::random([1, ci, x, y, z], Distribution::Normal(0.0, 1.0), &dev);
        let gflop = 2.0 * (ci * co * 27 * x * y * z) as f64 / 1e9;
        let time = common::best_of_3;
        let burn = time(&|| conv.forward(input.clone()));
        let im2col = time(&|| conv3d_im2col(&conv, input.clone()).expect("a stride-1 CPU convolution"));
        let ours = time(&|| conv3d_forward(&conv, input.clone()));
        // The AVX2 micro-kernel (what CPUs without AVX-512 run), where this CPU has AVX2.
        let avx2 = if Isa::Avx2.supported() {
            time(&|| conv3d_direct_with(&conv, &input, Isa::Avx2).unwrap_or_else(|| conv.forward(input.clone())))
        } else {
            f64::NAN
        };
        println!(
            "| {ci}->{co} on {x}x{y}x{z} | {gflop:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            burn * 1e3,
            gflop / burn,
            im2col * 1e3,
            gflop / im2col,
            ours * 1e3,
            gflop / ours,
            avx2 * 1e3,
            gflop / avx2
        );
    }
}
