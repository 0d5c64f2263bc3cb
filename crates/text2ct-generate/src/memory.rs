//! The peak memory of one generation, estimated before anything is allocated, so that a job
//! that cannot fit is refused with its estimate (`text2ct_io::memory::check_fits`) instead of
//! aborting on an allocation or being killed by the kernel after minutes of work. The same
//! estimate can pick a decode window that fits ([`estimate`] is cheap: arithmetic on the configs).
//!
//! # Where the memory goes (f32 everywhere, CPU backend)
//!
//! 1. **Fixed**: the process itself ([`RUNTIME_BYTES`]: the binary with the embedded default
//!    model, the allocator, thread stacks, the text encoder's and tokenizer's working memory) and
//!    the weights of the three networks (their parameter counts × 4 bytes, as loaded).
//! 2. **Sampling** (one U-Net call at a time; steps do not add up): the U-Net's activations at
//!    the guidance batch `B` (2 when both branches run in one U-Net call, 1 for `w = 0` or
//!    `w = 1`), `text2ct_models::memory::unet_activations`.
//! 3. **Decoding**: the MAISI decoder's activations in one pass, in slabs or per window, with the
//!    sliding window's full-size buffers (`text2ct_models::memory::decoder_activations`).
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
//! The MAISI decoder's full-width figures in `docs/notes/performance-log.md` agree too: one 32 × 32 × 16
//! latent window decoded to 128 × 128 × 64 is `(3·128 + 64) · 4` bytes per voxel = 1.88 GB of
//! activations + 84 MB of weights, against 1.96 GB measured.

use text2ct_models::burn::module::Module;
use text2ct_models::memory::{decoder_activations, prod, unet_activations, DecodeShape};
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

/// The estimated peak memory of generating one volume of `size` voxels (X, Y, Z; already checked
/// against the networks' multiples) with these networks: `weight_params` parameters in all,
/// guidance batch `guidance_batch` (2, or 1 for `w = 0` / `w = 1`), decoded as `decode` says
/// (a window in latent voxels, clipped to the latent).
pub fn estimate(
    unet: &UnetConfig,
    vae: &VaeConfig,
    weight_params: u64,
    size: [usize; 3],
    guidance_batch: usize,
    decode: DecodeShape,
) -> Result<GenerationMemory> {
    let f = vae.downsample_factor().max(1);
    let latent = size.map(|s| s.div_ceil(f));
    let out_voxels = prod(&size.map(|s| s as u64));
    let bad = |e: text2ct_models::ModelError| GenerateError::Invalid(e.to_string());
    Ok(GenerationMemory {
        runtime: RUNTIME_BYTES,
        weights: prod(&[weight_params, F32]),
        sampling: unet_activations(unet, latent, guidance_batch).map_err(bad)?,
        decoding: decoder_activations(vae, latent, decode),
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
    estimate(&p.unet.config, p.vae.config(), params as u64, opts.size, batch, decode_shape(opts))
}

/// How `opts` decodes: window by window when it has a window, else in one pass in its slabs.
pub fn decode_shape(opts: &SampleOptions) -> DecodeShape {
    match opts.decode_window {
        Some(window) => DecodeShape::Sliding { window },
        None => DecodeShape::OnePass { splits: opts.decode_splits },
    }
}

/// The decodings [`fit_decode`] tries, in order, after the one `opts` has: one pass in more and
/// more slabs (each voxel computed once; memory falls with the slabs), then sliding windows
/// halved from the card's (each voxel about 4.6 times at the release's overlap of 0.4).
fn decode_candidates(p: &Pipeline, opts: &SampleOptions) -> Vec<DecodeShape> {
    let mut v = Vec::new();
    let mut s = p.default_decode_splits().max(1);
    while s <= 256 {
        v.push(DecodeShape::OnePass { splits: s });
        s *= 2;
    }
    let mut w = opts.decode_window.or(p.card.decode.window).unwrap_or([64, 64, 64]);
    while w.iter().all(|&x| x >= 8) {
        w = w.map(|x| x / 2);
        v.push(DecodeShape::Sliding { window: w });
    }
    v
}

/// Make the decoding of `opts` fit in `budget` bytes of peak memory (the whole job's estimate,
/// [`of_job`]): when the one it has does not fit, take the first of [`decode_candidates`] that
/// does. Returns the decoding chosen, in words, when it changed (`None`: unchanged, it fits or
/// nothing smaller fits — [`check_fits`] then refuses the job with its estimate).
pub fn fit_decode(p: &Pipeline, opts: &mut SampleOptions, budget: u64) -> Result<Option<String>> {
    if of_job(p, opts)?.peak() <= budget {
        return Ok(None);
    }
    let latent = p.check_size(opts.size)?;
    for how in decode_candidates(p, opts) {
        let mut o = opts.clone();
        match how {
            DecodeShape::OnePass { splits } => (o.decode_window, o.decode_splits) = (None, splits),
            DecodeShape::Sliding { window } => (o.decode_window, o.decode_splits) = (Some(window), 1),
        }
        if of_job(p, &o)?.peak() <= budget {
            *opts = o;
            return Ok(Some(p.describe_decode(opts, latent)));
        }
    }
    Ok(None)
}

/// Refuse a job whose estimated peak ([`of_job`]) does not fit in the memory available
/// (`text2ct_io::memory`); the error gives the estimate and its parts. Returns the estimate.
pub fn check_fits(p: &Pipeline, opts: &SampleOptions) -> Result<GenerationMemory> {
    check_fits_in(p, opts, text2ct_io::memory::available()?)
}

/// [`check_fits`] against a given budget (`text2ct_io::memory::budget`: a user's cap and what
/// the machine has).
pub fn check_fits_in(
    p: &Pipeline,
    opts: &SampleOptions,
    budget: Option<text2ct_io::memory::Available>,
) -> Result<GenerationMemory> {
    let m = of_job(p, opts)?;
    let gib = text2ct_io::memory::format_bytes;
    let [x, y, z] = opts.size;
    let what = format!(
        "generating one {x} x {y} x {z} volume [sampling {}, decoding {}{}, writing {}, weights {}, runtime {}]",
        gib(m.sampling),
        gib(m.decoding),
        match decode_shape(opts) {
            DecodeShape::Sliding { window } => format!(" with decode window {window:?}"),
            DecodeShape::OnePass { splits: 1 } => " in one pass".into(),
            DecodeShape::OnePass { splits } => format!(" in one pass, {splits} slabs"),
        },
        gib(m.writing),
        gib(m.weights),
        gib(m.runtime)
    );
    text2ct_io::memory::check_fits_in(&what, m.peak(), budget).map_err(|e| {
        if m.decoding >= m.sampling && m.decoding > m.writing {
            GenerateError::Invalid(format!(
                "{e}; the decoder takes the most of it: more slabs (generate --decode-splits, e.g. 16) or a \
                 decode window (--decode-window, e.g. 16,16,8) bound that part"
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

    /// docs/performance.md: at the release's 512 x 512 x 128 neither the card's 80^3 window nor
    /// one pass fits this class of machine (24 GiB), a 40 x 40 x 40 window fits 8 GiB.
    #[test]
    fn release_size_decoding_choices() {
        let (u, v) = (UnetConfig::text2ct(), VaeConfig::maisi());
        // U-Net 217.7 M + MAISI VAE 20.9 M + CLIP text encoder 123 M parameters.
        let params = 217_659_524 + 20_944_897 + 123_060_480;
        let e = |how| estimate(&u, &v, params, [512, 512, 128], 2, how).unwrap().peak();
        let gib = 1u64 << 30;
        assert!(e(DecodeShape::Sliding { window: [80, 80, 80] }) > 22 * gib);
        assert!(e(DecodeShape::OnePass { splits: 256 }) > 22 * gib);
        let w40 = e(DecodeShape::Sliding { window: [40, 40, 40] });
        assert!(w40 < 8 * gib && w40 > 7 * gib, "{w40}");
    }

    #[test]
    fn estimates_grow_with_the_size_and_saturate_on_absurd_ones() {
        let (u, v) = phantom_default();
        let one_pass = DecodeShape::OnePass { splits: 1 };
        let e = |size, b, w: Option<[usize; 3]>| {
            let how = w.map_or(one_pass, |window| DecodeShape::Sliding { window });
            estimate(&u, &v, 4_000_000, size, b, how).unwrap()
        };
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
