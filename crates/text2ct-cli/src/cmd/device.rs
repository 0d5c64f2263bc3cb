//! `text2ct device-check --device NAME`: run the operations the networks are made of on a device
//! and on the CPU backend, at growing tensor sizes, and report the relative L2 difference of each.
//! A GPU backend that is wrong only past some size (a dispatch or buffer limit) shows up here
//! before it spoils a generation or a training run.

use anyhow::{bail, Result};
use text2ct_models::blocks::group_norm_forward;
use text2ct_models::burn::module::Module;
use text2ct_models::burn::nn::conv::Conv3dConfig;
use text2ct_models::burn::nn::{GroupNormConfig, PaddingConfig3d};
use text2ct_models::burn::tensor::{activation, Device, Distribution, Tensor};
use text2ct_models::interp::upsample_trilinear_x2;

#[derive(clap::Args)]
pub struct DeviceCheckArgs {
    /// The device to check against the CPU: wgpu / wgpu:N (in a `--features wgpu` build).
    #[arg(long, default_value = "wgpu")]
    pub device: String,
    /// Largest relative L2 difference accepted (the command fails above it).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
}

fn host(t: Tensor<5>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn rel(cpu: Tensor<5>, other: Tensor<5>) -> Result<f64> {
    let (a, b) = (host(cpu)?, host(other)?);
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        n += (f64::from(*x) - f64::from(*y)).powi(2);
        d += f64::from(*x).powi(2);
    }
    Ok((n / d.max(1e-30)).sqrt())
}

pub fn run(a: DeviceCheckArgs) -> Result<()> {
    let dev = crate::util::device(&a.device)?;
    let cpu = Device::flex();
    let mut worst = 0f64;
    println!("| tensor | elements | conv3d 3x3x3 | group norm (text2ct) | SiLU | a + 0.5a | trilinear x2 | group norm (burn's, not used) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (c, x, y, z) in [
        (16, 16, 16, 8),
        (16, 32, 32, 16),
        (16, 64, 32, 32),
        (16, 48, 48, 32),
        (16, 64, 64, 32),
        (32, 48, 48, 32),
        (32, 64, 64, 32),
        (8, 128, 64, 32),
    ] {
        let t = Tensor::<5>::random([1, c, x, y, z], Distribution::Normal(0.0, 1.0), &cpu);
        let td = Tensor::<5>::from_data(t.clone().into_data(), &dev);
        let conv = Conv3dConfig::new([c, c], [3, 3, 3]).with_padding(PaddingConfig3d::Explicit(1, 1, 1)).init(&cpu);
        let conv_d = conv.clone().to_device(&dev);
        let gn = GroupNormConfig::new(8.min(c), c).with_epsilon(1e-6).init(&cpu);
        let gn_d = gn.clone().to_device(&dev);
        let errs = [
            rel(conv.forward(t.clone()), conv_d.forward(td.clone()))?,
            rel(group_norm_forward(&gn, t.clone()), group_norm_forward(&gn_d, td.clone()))?,
            rel(activation::silu(t.clone()), activation::silu(td.clone()))?,
            rel(t.clone() + t.clone().mul_scalar(0.5), td.clone() + td.clone().mul_scalar(0.5))?,
            rel(upsample_trilinear_x2(t.clone()), upsample_trilinear_x2(td.clone()))?,
        ];
        // burn's own GroupNorm, for the record (text2ct uses group_norm_forward instead).
        let burn_gn = rel(gn.forward(t.clone()), gn_d.forward(td))?;
        worst = errs.iter().fold(worst, |m, &e| if e.is_nan() { f64::INFINITY } else { m.max(e) });
        let cells: Vec<String> = errs.iter().map(|e| format!("{e:.1e}")).collect();
        println!("| [1, {c}, {x}, {y}, {z}] | {} | {} | {burn_gn:.1e} |", c * x * y * z, cells.join(" | "));
    }
    println!("\nlargest relative L2 difference {worst:.2e} (tolerance {:.0e})", a.tolerance);
    if !(worst <= a.tolerance) {
        bail!("device {} disagrees with the CPU backend (see the table)", a.device);
    }
    Ok(())
}
