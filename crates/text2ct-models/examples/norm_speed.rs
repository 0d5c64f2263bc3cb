//! Time of GroupNorm + SiLU: burn's tensor operations (`silu(blocks::group_norm_forward(..))`)
//! against the fused CPU pass of `text2ct_models::fusednorm::group_norm_silu`, at the sizes of
//! the VAE's and the U-Net's largest activations (32 groups, as MAISI and Text2CT use).
//!
//! `cargo run --release -p text2ct-models --example norm_speed [-- C,X,Y,Z ...]`

use burn::nn::GroupNormConfig;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Tensor};
use text2ct_models::blocks::group_norm_forward;
use text2ct_models::fusednorm::group_norm_silu;

#[path = "common/mod.rs"]
mod common;

fn main() {
    let shapes = common::shapes_from_args("C,X,Y,Z", vec![[64, 64, 64, 32], [64, 128, 128, 32], [64, 16, 16, 8]]);
    let dev = Device::flex();
    println!("| GroupNorm(32) + SiLU | MB | burn ops ms (best of 3) | fused ms | gain |");
    println!("|---|---|---|---|---|");
    for [c, x, y, z] in shapes {
        let gn = GroupNormConfig::new(32, c).with_epsilon(1e-6).init(&dev);
        let input = Tensor::<5>::random([1, c, x, y, z], Distribution::Normal(0.0, 1.0), &dev);
        let time = common::best_of_3;
        let burn = time(&|| silu(group_norm_forward(&gn, input.clone())));
        let fused = time(&|| group_norm_silu(&gn, input.clone()));
        let mb = (c * x * y * z * 4) as f64 / 1e6;
        println!("| {c} x {x}x{y}x{z} | {mb:.0} | {:.1} | {:.1} | {:.1}x |", burn * 1e3, fused * 1e3, burn / fused);
    }
}
