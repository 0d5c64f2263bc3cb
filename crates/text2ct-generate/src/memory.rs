//! The peak memory of one generation, estimated before anything is allocated, so that a job
//! that cannot fit is refused with its estimate (`text2ct_io::memory::check_fits`) instead of
//! aborting on an allocation or being killed by the kernel after minutes of work. The same
//! estimate can pick a decode window that fits ([`estimate`] is cheap: arithmetic on the configs).
//!
//! # Where the memory goes (f32 everywhere, CPU backend)
//!
//! Notation: `B` the guidance batch (2 when both branches run in one U-Net call, 1 for `w = 0`
//! or `w = 1`); U-Net level `l` has `C_l` channels, `n_l` ResBlocks per down block and `V_l`
//! voxels (the latent's voxels / 8^l).
//!
//! 1. **Fixed**: the process itself ([`RUNTIME_BYTES`]: the binary with the embedded default
//!    model, the allocator, thread stacks, the text encoder's and tokenizer's working memory) and
//!    the weights of the three networks (their parameter counts × 4 bytes, as loaded).
//! 2. **Sampling** (one U-Net call at a time; steps do not add up): every down block's outputs
//!    (the skips) are held until the up path uses them. The peak comes in the up path, at the
//!    first ResBlock of a level, whose input concatenates the level below's output (`C_h`
//!    channels: `C_{l+1}`, or `C_l` at the deepest level) with a skip: live then are the `n_l`
//!    skips still waiting at this level, every skip of the shallower levels (`(n_j + 1) C_j V_j`),
//!    the concatenated input, its GroupNorm + SiLU output, the convolution's padded channel-last
//!    copy of it (the direct convolution's) and the convolution's output:
//!    `B V_l [n_l C_l + 3 (C_h + C_l) + C_l]`. At a level with attention the transformer's
//!    feed-forward may be larger: GEGLU's `8 C` hidden, its `4 C` GELU and `4 C` product, with
//!    the block's input, norm and residual, `≈ 20 C_l` per token (burn's attention itself is a
//!    tiled kernel beyond 512 tokens, linear in the tokens). Besides: the latent, the noise, the
//!    doubled input and the guided output, `8 C_in V_0`.
//! 3. **Decoding** (MAISI decoder, in one pass or per window): the full-resolution level of one
//!    window dominates. Entering decoder level `i` (`V_i` voxels of its output), the first
//!    ResBlock holds its input (`c_in` channels), the GroupNorm + SiLU output, the padded copy
//!    and its output (`c_out`): `V_i (3 c_in + c_out)`; the peak is the largest level. Decoding
//!    window by window adds the full-size output accumulator, its weight map and the blended
//!    result (`3 × out_channels × V_out`).
//! 4. **Writing**: the decoded tensor's values and the reordered volume (`8` bytes per output
//!    voxel), then the NIfTI writer's int16 copy: at most 12 bytes per output voxel in all.
//!
//! `peak = fixed + max(sampling, decoding, writing)`: the U-Net's activations are freed before
//! decoding starts, the decoder's before writing.
//!
//! # Checked against measurement
//!
//! The default model (`phantom-default`, U-Net [16, 32, 64], VAE [16, 32, 32]; 6.1 M
//! parameters), `text2ct generate --steps 2` (`--steps 1` at 256 × 256 × 128; the steps do not
//! change the peak), guidance 5, peak resident set size from `/usr/bin/time` (`%M`) on the
//! development machine (2 vCPUs, 2026-12-07), against the estimate `generate` prints:
//!
//! | `--size` | decode | estimate | measured peak RSS | estimate / measured |
//! |---|---|---|---|---|
//! | 64 × 64 × 32 (the card's) | one pass | 175.1 MiB | 140.9 MiB | 1.24 |
//! | 128 × 128 × 64 | one pass | 567.1 MiB | 567.5 MiB | 1.00 |
//! | 256 × 256 × 128 | one pass | 3.6 GiB | 3.63 GiB | 0.99 |
//! | 256 × 256 × 128 | window 16 × 16 × 8 | 311.1 MiB | 274.1 MiB | 1.13 |
//!
//! Where the activations dominate the estimate is within 1 %; at small sizes the fixed part
//! ([`RUNTIME_BYTES`]) errs on the safe side. `estimate_matches_measured_peaks` keeps the model
//! and these measurements together.
//!
//! The MAISI decoder's full-width figures in `docs/performance.md` agree too: one 32 × 32 × 16
//! latent window decoded to 128 × 128 × 64 is `(3·128 + 64) · 4` bytes per voxel = 1.88 GB of
//! activations + 84 MB of weights, against 1.96 GB measured.

use text2ct_models::burn::module::Module;
use text2ct_models::unet::UnetConfig;
use text2ct_models::vae::VaeConfig;

use crate::error::{GenerateError, Result};
use crate::pipeline::{Pipeline, SampleOptions};
use crate::text_encoder::TextEncoder;

/// The process besides the networks and their activations: the binary (with the embedded
/// default model), the allocator's arenas, thread stacks, the text encoder's working memory.
/// Measured: the peak RSS of a generation at 64 × 64 × 32, whose activations are small.
pub const RUNTIME_BYTES: u64 = 96 << 20;

/// Bytes in an f32.
const F32: u64 = 4;

/// The parts of one generation's peak memory, in bytes (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationMemory {
    /// The process besides the networks ([`RUNTIME_BYTES`]).
    pub runtime: u64,
    /// The loaded weights of the U-Net, the VAE and the text encoder.
    pub weights: u64,
    /// The U-Net's activations at their peak, plus the latent, noise and guided output.
    pub sampling: u64,
    /// The VAE decoder's activations at their peak (one window, or the whole latent), plus the
    /// sliding window's full-size buffers.
    pub decoding: u64,
    /// The decoded volume's copies while it is reordered and written.
    pub writing: u64,
}

impl GenerationMemory {
    /// The estimated peak: the fixed part plus the largest stage.
    pub fn peak(&self) -> u64 {
        self.runtime.saturating_add(self.weights).saturating_add(self.sampling.max(self.decoding).max(self.writing))
    }
}

/// `a · b · c …` saturating at `u64::MAX` (absurd sizes must give an absurd estimate, not wrap).
fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// Voxels of `dims` halved `times` times (rounded up, as the networks pad).
fn halved(dims: [usize; 3], times: usize) -> u64 {
    prod(&dims.map(|d| (d as u64).div_ceil(1u64 << times.min(63))))
}

/// The U-Net's activation peak at `latent` voxels for batch `b` (bytes).
pub fn unet_activations(unet: &UnetConfig, latent: [usize; 3], b: usize) -> Result<u64> {
    let n = unet.num_channels.len();
    let bad = |e: text2ct_models::ModelError| GenerateError::Invalid(format!("U-Net config: {e}"));
    let res = unet.num_res_blocks.per_level(n, "num_res_blocks").map_err(bad)?;
    if n == 0 || unet.attention_levels.len() != n {
        return Err(GenerateError::Invalid("U-Net config: num_channels and attention_levels disagree".into()));
    }
    let c = |l: usize| unet.num_channels[l] as u64;
    let b = b as u64;
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

/// The VAE decoder's activation peak for a latent window of `window` voxels (bytes).
pub fn decoder_activations(vae: &VaeConfig, window: [usize; 3]) -> u64 {
    let n = vae.num_channels.len();
    let rev: Vec<u64> = vae.num_channels.iter().rev().map(|&c| c as u64).collect();
    let f = vae.downsample_factor() as u64;
    let out = prod(&[prod(&window.map(|w| w as u64)), f, f, f]);
    let mut peak = 0u64;
    for i in 0..n {
        let v = out / (1u64 << (3 * (n - 1 - i)).min(63)).max(1);
        let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
        peak = peak.max(prod(&[v, 3 * c_in + rev[i]]));
    }
    prod(&[peak, F32])
}

/// The estimated peak memory of generating one volume of `size` voxels (X, Y, Z; already checked
/// against the networks' multiples) with these networks: `weight_params` parameters in all,
/// guidance batch `guidance_batch` (2, or 1 for `w = 0` / `w = 1`), decoded in one pass
/// (`decode_window` `None`) or window by window (latent voxels, clipped to the latent).
pub fn estimate(
    unet: &UnetConfig,
    vae: &VaeConfig,
    weight_params: u64,
    size: [usize; 3],
    guidance_batch: usize,
    decode_window: Option<[usize; 3]>,
) -> Result<GenerationMemory> {
    let f = vae.downsample_factor().max(1);
    let latent = size.map(|s| s.div_ceil(f));
    let out_voxels = prod(&size.map(|s| s as u64));
    let out_ch = vae.out_channels as u64;
    let decoding = match decode_window {
        Some(w) if (0..3).any(|i| w[i] < latent[i]) => {
            let w = [0, 1, 2].map(|i| w[i].clamp(1, latent[i]));
            decoder_activations(vae, w).saturating_add(prod(&[3, out_ch, out_voxels, F32]))
        }
        _ => decoder_activations(vae, latent),
    };
    Ok(GenerationMemory {
        runtime: RUNTIME_BYTES,
        weights: prod(&[weight_params, F32]),
        sampling: unet_activations(unet, latent, guidance_batch)?,
        decoding,
        writing: prod(&[12, out_voxels]),
    })
}

/// The estimate for one volume of `opts` with the loaded pipeline `p` (its networks' configs and
/// parameter counts; the guidance batch from `opts.guidance`, as `Pipeline::sample` runs it).
pub fn of_job(p: &Pipeline, opts: &SampleOptions) -> Result<GenerationMemory> {
    p.check_size(opts.size)?;
    let text = match &p.text {
        TextEncoder::Clip { enc, .. } => enc.num_params(),
        TextEncoder::MiniLm { enc, .. } => enc.num_params(),
    };
    let params = p.unet.net.num_params() + p.vae.net.num_params() + text;
    let batch = if opts.guidance == 0.0 || opts.guidance == 1.0 { 1 } else { 2 };
    estimate(&p.unet.config, p.vae.config(), params as u64, opts.size, batch, opts.decode_window)
}

/// Refuse a job whose estimated peak ([`of_job`]) does not fit in the memory available
/// (`text2ct_io::memory`); the error gives the estimate and its parts. Returns the estimate.
pub fn check_fits(p: &Pipeline, opts: &SampleOptions) -> Result<GenerationMemory> {
    let m = of_job(p, opts)?;
    let gib = text2ct_io::memory::format_bytes;
    let [x, y, z] = opts.size;
    let what = format!(
        "generating one {x} x {y} x {z} volume [sampling {}, decoding {}{}, writing {}, weights {}, runtime {}]",
        gib(m.sampling),
        gib(m.decoding),
        match opts.decode_window {
            Some(w) => format!(" with decode window {w:?}"),
            None => " in one pass".into(),
        },
        gib(m.writing),
        gib(m.weights),
        gib(m.runtime)
    );
    text2ct_io::memory::check_fits(&what, m.peak()).map_err(|e| {
        if m.decoding >= m.sampling && m.decoding > m.writing {
            GenerateError::Invalid(format!(
                "{e}; the decoder takes the most of it: a decode window (generate --decode-window, e.g. 16,16,8) \
                 bounds that part"
            ))
        } else {
            e.into()
        }
    })?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phantom_default() -> (UnetConfig, VaeConfig) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/phantom-default");
        let u = UnetConfig::from_json_file(&dir.join("unet_config.json")).unwrap();
        let v = VaeConfig::from_json_file(&dir.join("vae_config.json")).unwrap();
        (u, v)
    }

    /// The measured peaks of the module documentation's table (bytes), against the estimate
    /// for the default model as `generate` loads it.
    #[test]
    fn estimate_matches_measured_peaks() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/phantom-default");
        let p = Pipeline::load(&dir, &text2ct_models::burn::tensor::Device::flex()).unwrap();
        let measured: [([usize; 3], Option<[usize; 3]>, u64); 4] = [
            ([64, 64, 32], None, 144_252 << 10),
            ([128, 128, 64], None, 581_080 << 10),
            ([256, 256, 128], None, 3_802_848 << 10),
            ([256, 256, 128], Some([16, 16, 8]), 280_640 << 10),
        ];
        for (size, window, rss) in measured {
            let opts = SampleOptions { size, decode_window: window, guidance: 5.0, ..p.default_options() };
            let est = of_job(&p, &opts).unwrap().peak();
            let ratio = est as f64 / rss as f64;
            // Never more than 5 % under; over by at most the fixed part's margin at small sizes.
            assert!((0.95..1.3).contains(&ratio), "{size:?} {window:?}: estimate {est}, measured {rss} ({ratio:.2})");
        }
    }

    #[test]
    fn maisi_decoder_matches_the_measured_window() {
        // docs/performance.md: one 32 x 32 x 16 latent window of the full-width MAISI decoder
        // (-> 128 x 128 x 64) peaks at 1.96 GB RSS, 84 MB of it weights.
        let a = decoder_activations(&VaeConfig::maisi(), [32, 32, 16]) as f64;
        let measured = 1.96e9 - 84e6;
        assert!((a / measured - 1.0).abs() < 0.1, "{a} vs {measured}");
    }

    #[test]
    fn estimates_grow_with_the_size_and_saturate_on_absurd_ones() {
        let (u, v) = phantom_default();
        let e = |size, b, w| estimate(&u, &v, 4_000_000, size, b, w).unwrap();
        let small = e([64, 64, 32], 2, None);
        let big = e([128, 128, 64], 2, None);
        assert!(big.sampling > 7 * small.sampling && big.decoding == 8 * small.decoding);
        // w = 1 runs one branch: half the U-Net activations (plus the same latent buffers).
        assert!(e([128, 128, 64], 1, None).sampling < big.sampling * 6 / 10);
        // A window bounds the decoder; the full-size buffers remain.
        let win = e([256, 256, 128], 2, Some([16, 16, 8]));
        let one = e([256, 256, 128], 2, None);
        assert!(win.decoding < one.decoding / 4, "{win:?} {one:?}");
        assert_eq!(e([256, 256, 128], 2, Some([64, 64, 32])), one, "a window as large as the latent is one pass");
        // Absurd sizes give absurd (saturated, not wrapped) estimates.
        let huge = e([100_000; 3], 2, None);
        assert!(huge.peak() > 1 << 58, "{huge:?}");
        assert_eq!(e([usize::MAX; 3], 2, None).peak(), u64::MAX);
    }
}
