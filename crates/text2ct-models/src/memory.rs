//! The activation memory of the networks, from their configs and sizes alone: what a U-Net
//! forward and a VAE encode or decode hold at their peak (f32, CPU backend; weights not
//! included). Commands estimate a job with these before anything is allocated and refuse what
//! cannot fit ([`check_fits`], over `text2ct_io::memory`); `text2ct_generate::memory` adds the
//! weights, the runtime and the writing to a whole generation's estimate, and keeps the table of
//! measured peaks these models are checked against.
//!
//! # U-Net ([`unet_activations`])
//! `B` the batch; level `l` has `C_l` channels, `n_l` ResBlocks per down block and `V_l` voxels
//! (the latent's / 8^l). Every down block's outputs (the skips) are held until the up path uses
//! them. The peak comes in the up path, at the first ResBlock of a level, whose input
//! concatenates the level below's output (`C_h`: `C_{l+1}`, or `C_l` at the deepest level) with
//! a skip: live then are the `n_l` skips still waiting at this level, every skip of the shallower
//! levels (`(n_j + 1) C_j V_j`), the concatenated input, its GroupNorm + SiLU output, the
//! convolution's padded channel-last copy and its output: `B V_l [n_l C_l + 3 (C_h + C_l) + C_l]`.
//! At a level with attention the transformer's feed-forward may be larger (`≈ 20 C_l` per
//! token: GEGLU's `8 C` hidden, its `4 C` GELU and `4 C` product, the block's input, norm and
//! residual). Besides: the latent, the noise, the doubled input and the guided output,
//! `8 C_in V_0`.
//!
//! # VAE decoder ([`decoder_activations`])
//! - **One pass** (`Vae::decode`): entering decoder level `i` (`V_i` voxels of its output), the
//!   first ResBlock holds its input (`c_in` channels), the GroupNorm + SiLU output, the padded copy
//!   and its output (`c_out`): `V_i (3 c_in + c_out)`; the peak is the largest level.
//! - **One pass in S slabs** (`Vae::decode_split`): each layer's whole input and output
//!   (`c_up + c_0` channels at the top level, `c_0` that level's width and `c_up` the one below)
//!   plus one slab's temporaries, `(2 c_up + c_0) / S`, and a plane of bookkeeping.
//! - **Sliding window**: one window decoded in one pass, plus the full-size output accumulator,
//!   its weight map and the blended result (`3 × out_channels` per output voxel).
//!
//! # VAE encoder ([`encoder_activations`])
//! Six tensors of the first level's width at full resolution.

use crate::error::{ModelError, Result};
use crate::unet::UnetConfig;
use crate::vae::VaeConfig;

/// Bytes in an f32.
const F32: u64 = 4;

/// `a · b · c …` saturating at `u64::MAX` (absurd sizes must give an absurd estimate, not wrap).
pub fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// Voxels of `dims` halved `times` times (rounded up, as the networks pad).
fn halved(dims: [usize; 3], times: usize) -> u64 {
    prod(&dims.map(|d| (d as u64).div_ceil(1u64 << times.min(63))))
}

/// How a latent is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeShape {
    /// The whole latent at once, in `splits` slabs (`Vae::decode_split`; 1: `Vae::decode`).
    OnePass { splits: usize },
    /// Window by window (`Vae::decode_sliding_window`), windows in latent voxels.
    Sliding { window: [usize; 3] },
}

/// The U-Net's activation peak, in bytes, for a latent of `latent` voxels and batch `batch`.
pub fn unet_activations(unet: &UnetConfig, latent: [usize; 3], batch: usize) -> Result<u64> {
    let n = unet.num_channels.len();
    let bad = |e: ModelError| ModelError::Invalid(format!("U-Net config: {e}"));
    let res = unet.num_res_blocks.per_level(n, "num_res_blocks").map_err(bad)?;
    if n == 0 || unet.attention_levels.len() != n {
        return Err(ModelError::Invalid("U-Net config: num_channels and attention_levels disagree".into()));
    }
    let c = |l: usize| unet.num_channels[l] as u64;
    let b = batch as u64;
    let mut shallower = 0u64; // skips of the levels above the current one, in floats
    let mut peak = 0u64;
    for (l, &nl) in res.iter().enumerate() {
        let v = halved(latent, l);
        let ch = if l + 1 < n { c(l + 1) } else { c(l) };
        let nl = nl as u64;
        let resblock = nl * c(l) + 3 * (ch + c(l)) + c(l);
        let attention = if unet.attention_levels[l] { nl * c(l) + 20 * c(l) } else { 0 };
        let here = prod(&[b, v, resblock.max(attention)]).saturating_add(shallower);
        peak = peak.max(here);
        shallower = shallower.saturating_add(prod(&[b, v, (nl + 1) * c(l)]));
    }
    let io = prod(&[8, unet.in_channels as u64, halved(latent, 0)]);
    Ok(prod(&[peak.saturating_add(io), F32]))
}

/// The decoder's activation peak, in bytes, for one whole latent of `latent` voxels decoded in
/// one pass without slabs.
fn decoder_one_pass(vae: &VaeConfig, latent: [usize; 3]) -> u64 {
    let n = vae.num_channels.len();
    let rev: Vec<u64> = vae.num_channels.iter().rev().map(|&c| c as u64).collect();
    let f = vae.downsample_factor() as u64;
    let out = prod(&[prod(&latent.map(|w| w as u64)), f, f, f]);
    let mut peak = 0u64;
    for i in 0..n {
        let v = out / (1u64 << (3 * (n - 1 - i)).min(63)).max(1);
        let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
        peak = peak.max(prod(&[v, 3 * c_in + rev[i]]));
    }
    prod(&[peak, F32])
}

/// The VAE decoder's activation peak, in bytes, decoding a latent of `latent` voxels as `how`
/// says (a window as large as the latent is one pass).
pub fn decoder_activations(vae: &VaeConfig, latent: [usize; 3], how: DecodeShape) -> u64 {
    let f = vae.downsample_factor() as u64;
    let out = prod(&[prod(&latent.map(|w| w as u64)), f, f, f]);
    match how {
        DecodeShape::OnePass { splits } if splits > 1 => {
            let c0 = vae.num_channels.first().copied().unwrap_or(0) as u64;
            let cup = vae.num_channels.get(1).map_or(c0, |&c| c as u64);
            let slab = (2 * cup + c0).div_ceil(splits as u64);
            prod(&[out, cup + c0 + 1 + slab, F32])
        }
        DecodeShape::Sliding { window } if (0..3).any(|i| window[i] < latent[i]) => {
            let w = [0, 1, 2].map(|i| window[i].clamp(1, latent[i].max(1)));
            decoder_one_pass(vae, w).saturating_add(prod(&[3, vae.out_channels as u64, out, F32]))
        }
        _ => decoder_one_pass(vae, latent),
    }
}

/// The VAE encoder's activation peak, in bytes, for an image of `size` voxels.
pub fn encoder_activations(vae: &VaeConfig, size: [usize; 3]) -> u64 {
    let c0 = vae.num_channels.first().copied().unwrap_or(0) as u64;
    prod(&[prod(&size.map(|s| s as u64)), 6, c0, F32])
}

/// Refuse work whose estimated peak (`bytes`) does not fit in the memory available
/// (`text2ct_io::memory::check_fits`); `what` names the work and its size, `hint` says what to do
/// instead (empty: nothing to add).
pub fn check_fits(what: &str, bytes: u64, hint: &str) -> Result<()> {
    text2ct_io::memory::check_fits(what, bytes)
        .map_err(|e| ModelError::Invalid(if hint.is_empty() { e.to_string() } else { format!("{e}; {hint}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maisi_decoder_matches_the_measured_window() {
        // docs/notes/performance-log.md: one 32 x 32 x 16 latent window of the full-width MAISI decoder
        // (-> 128 x 128 x 64) peaks at 1.96 GB RSS, 84 MB of it weights.
        let a = decoder_activations(&VaeConfig::maisi(), [32, 32, 16], DecodeShape::OnePass { splits: 1 }) as f64;
        let measured = 1.96e9 - 84e6;
        assert!((a / measured - 1.0).abs() < 0.1, "{a} vs {measured}");
    }

    #[test]
    fn slabs_and_windows_bound_the_decoder() {
        let v = VaeConfig::maisi();
        let plain = decoder_activations(&v, [32, 32, 16], DecodeShape::OnePass { splits: 1 });
        let split = decoder_activations(&v, [32, 32, 16], DecodeShape::OnePass { splits: 4 });
        let more = decoder_activations(&v, [32, 32, 16], DecodeShape::OnePass { splits: 16 });
        assert!(more < split && split < plain * 2 / 3, "{more} {split} {plain}");
        let big = [128, 128, 32];
        let slide = decoder_activations(&v, big, DecodeShape::Sliding { window: [32, 32, 16] });
        assert!(slide < decoder_activations(&v, big, DecodeShape::OnePass { splits: 4 }));
        // A window as large as the latent is one pass.
        assert_eq!(
            decoder_activations(&v, big, DecodeShape::Sliding { window: [200, 200, 200] }),
            decoder_activations(&v, big, DecodeShape::OnePass { splits: 1 })
        );
        assert!(encoder_activations(&v, [64, 64, 32]) > 0);
    }

    #[test]
    fn absurd_sizes_saturate() {
        let u = UnetConfig::text2ct();
        assert_eq!(unet_activations(&u, [usize::MAX; 3], 2).unwrap(), u64::MAX);
        // Near the measured 1.9 GB of activations at Text2CT's latent (docs/notes/performance-log.md:
        // 2.72 GB peak less 0.87 GB of weights).
        let at = unet_activations(&u, [128, 128, 32], 1).unwrap();
        assert!((1.4e9..2.6e9).contains(&(at as f64)), "{at}");
        assert!(unet_activations(&u, [128, 128, 32], 2).unwrap() > at * 19 / 10);
        assert_eq!(
            decoder_activations(&VaeConfig::maisi(), [usize::MAX; 3], DecodeShape::OnePass { splits: 1 }),
            u64::MAX
        );
    }

    #[test]
    fn refusal_names_the_work_and_the_hint() {
        if text2ct_io::memory::available().ok().flatten().is_some() {
            let e = check_fits("decoding x", u64::MAX, "use a window").unwrap_err().to_string();
            assert!(e.contains("decoding x") && e.contains("use a window"), "{e}");
        }
        assert!(check_fits("x", 1, "").is_ok());
    }
}
