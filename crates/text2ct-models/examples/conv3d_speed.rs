//! GFLOP/s of burn's `flex` conv3d (3x3x3, padding 1) and of `text2ct_models::blocks::conv3d_forward`
//! (which takes an im2col matrix product where burn's per-call kernel re-ordering dominates, and
//! the AVX-512 / AVX2 direct convolution of `text2ct_models::directconv` for larger outputs) at the
//! shapes of MAISI-VAE decoding and the diffusion U-Net, to set against the machine's f32 GEMM peak.
//! A second table compares the direct convolution's f32 and bf16 kernels (`--precision bf16`:
//! AVX512-BF16, where the CPU has it), each packing its weight on every call and with the weight
//! packed once (a model's cache, `text2ct_models::precision`), and how long packing takes.
//!
//! `cargo run --release -p text2ct-models --example conv3d_speed [-- C_IN,C_OUT,X,Y,Z ...]`

use burn::nn::conv::Conv3dConfig;
use burn::nn::PaddingConfig3d;
use burn::tensor::{Device, Distribution, Tensor};
use text2ct_models::blocks::{conv3d_forward, conv3d_im2col};
use text2ct_models::directconv::{best_isa, conv3d_direct_with, pack_weight, Isa, Kernel};
use text2ct_models::precision::ConvKernels;
use text2ct_models::Precision;

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
    let shapes_again = shapes.clone();
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
            time(&|| {
                conv3d_direct_with(&conv, &input, Kernel::F32(Isa::Avx2)).unwrap_or_else(|| conv.forward(input.clone()))
            })
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

    let Some(isa) = best_isa() else { return };
    let bf16 = Kernel::Bf16.supported();
    println!();
    println!(
        "| direct conv3d ({threads} threads, {isa:?}{}) | f32 ms | f32 GFLOP/s | f32 packed once ms | GFLOP/s | bf16 ms | bf16 GFLOP/s | bf16 packed once ms | GFLOP/s | bf16 / f32 (packed once) | packing f32 ms | packing bf16 ms |",
        if bf16 { ", AVX512-BF16" } else { "; no AVX512-BF16: bf16 columns empty" }
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for [ci, co, x, y, z] in shapes_again {
        let conv = Conv3dConfig::new([ci, co], [3, 3, 3]).with_padding(PaddingConfig3d::Explicit(1, 1, 1)).init(&dev);
        let input = Tensor::<5>::random([1, ci, x, y, z], Distribution::Normal(0.0, 1.0), &dev);
        let gflop = 2.0 * (ci * co * 27 * x * y * z) as f64 / 1e9;
        let time = common::best_of_3;
        let direct = |k: Kernel| {
            if !k.supported() {
                return f64::NAN;
            }
            time(&|| conv3d_direct_with(&conv, &input, k).expect("the direct path applies"))
        };
        // A model's kernels: the first call packs, the timed ones reuse the pack.
        let cached = |p: Precision| {
            if p == Precision::Bf16 && !bf16 {
                return f64::NAN;
            }
            let mut kernels = ConvKernels::default();
            kernels.set_precision(p);
            let _scope = kernels.enter();
            let _ = conv3d_forward(&conv, input.clone()).into_data();
            time(&|| conv3d_forward(&conv, input.clone()))
        };
        let (f32_each, f32_once) = (direct(Kernel::F32(isa)), cached(Precision::F32));
        let (bf_each, bf_once) = (direct(Kernel::Bf16), cached(Precision::Bf16));
        let w = conv.weight.val().into_data().try_into_vec::<f32>().expect("f32 weight");
        let pack_ms = |k: Kernel| {
            if !k.supported() {
                return f64::NAN;
            }
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                std::hint::black_box(pack_weight(&w, co, ci, k));
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e3
        };
        println!(
            "| {ci}->{co} on {x}x{y}x{z} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            f32_each * 1e3,
            gflop / f32_each,
            f32_once * 1e3,
            gflop / f32_once,
            bf_each * 1e3,
            gflop / bf_each,
            bf_once * 1e3,
            gflop / bf_once,
            f32_once / bf_once,
            pack_ms(Kernel::F32(isa)),
            pack_ms(Kernel::Bf16)
        );
    }
}
