//! A 3D PatchGAN discriminator (in the spirit of MONAI's `PatchDiscriminator`, which MAISI's
//! VAE training uses): `conv 4³ stride 2 → LeakyReLU(0.2)`, then `layers - 1` times
//! `conv 4³ stride 2 (channels x2) → InstanceNorm (GroupNorm with one group per channel,
//! affine) → LeakyReLU(0.2)`, then a `3³` convolution to one logit per patch.
//! Initialisation is PyTorch's default from a seeded generator (deterministic).

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::GroupNorm;
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};
use text2ct_models::blocks::{conv3d, group_norm, InitSource};

/// One stride-2 stage.
#[derive(Module, Debug)]
pub struct DiscStage {
    pub conv: Conv3d,
    pub norm: Option<GroupNorm>,
}

/// The discriminator.
#[derive(Module, Debug)]
pub struct PatchDiscriminator {
    pub stages: Vec<DiscStage>,
    pub head: Conv3d,
}

impl PatchDiscriminator {
    /// `channels` in the first stage, doubled per stage; `layers` stride-2 stages.
    pub fn new(in_channels: usize, channels: usize, layers: usize, seed: u64, device: &Device) -> Self {
        let mut src = InitSource::new(seed);
        let mut stages = Vec::with_capacity(layers);
        let mut cin = in_channels;
        let mut ch = channels;
        for i in 0..layers {
            let conv = conv3d(&mut src, &format!("stages.{i}.conv"), cin, ch, 4, 2, 1, device);
            let norm = (i > 0).then(|| group_norm(&mut src, &format!("stages.{i}.norm"), ch, ch, 1e-5, device));
            stages.push(DiscStage { conv, norm });
            cin = ch;
            ch *= 2;
        }
        let head = conv3d(&mut src, "head", cin, 1, 3, 1, 1, device);
        PatchDiscriminator { stages, head }
    }

    /// Patch logits `[B, 1, x, y, z]` for images `[B, C, X, Y, Z]`.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let mut h = x;
        for s in &self.stages {
            h = s.conv.forward(h);
            if let Some(n) = &s.norm {
                h = text2ct_models::blocks::group_norm_forward(n, h);
            }
            h = leaky_relu(h, 0.2);
        }
        self.head.forward(h)
    }
}
