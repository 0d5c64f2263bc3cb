//! CT-ViT, the 3D-CLIP vision encoder of Text2CT (CT-CLIP's `CTViT`, Text2CT variant), with
//! vector quantisation as `vector-quantize-pytorch` 1.1.2 runs it at inference.
//!
//! Forward (`CTViT(video, return_encoded_tokens=True)`):
//! - input `(B, C, H, W, D)` (MONAI layout; Text2CT permutes it to `(B, C, D, H, W)`), or
//!   `(B, C, D, H, W)` with `input_layout = "DHW"` (CT-CLIP's original);
//! - patch embedding `to_patch_emb`: rearrange `b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)`,
//!   LayerNorm, Linear, LayerNorm;
//! - spatial transformer on `(b t) (h w) d` with the ContinuousPositionBias (a 2-D MLP of
//!   `sign(Δ) log(|Δ| + 1)`), temporal transformer on `(b h w) t d` (no bias, not causal);
//!   each layer `x = PEG(x) + x; x = Attn(x) + x; x = FF(x) + x`, then the bias-less `norm_out`;
//! - PEG: depthwise 3x3x3 convolution (bias) with causal padding `(2, 0)` in t and `(1, 1)` in h, w,
//!   on the tokens reshaped to `(b, t, h, w, d)`. **Quirk kept:** the temporal stage's tokens are in
//!   `(b, h, w, t)` order but are reshaped with the same `(b, t, h, w)` shape, so its PEG sees a
//!   scrambled grid; the checkpoint was trained that way;
//! - attention: bias-less LayerNorm (gamma parameter, beta buffer) feeding `to_q` only — **`to_kv`
//!   reads the un-normalised input** (reference quirk: `kv_input` is taken before the norm) — no biases,
//!   q and k L2-normalised and multiplied by the learnt `q_scale` / `k_scale`, logits x 8,
//!   (+ position bias), softmax, `to_out` (no bias). `null_kv` is empty (`[heads, 0, dim_head]`);
//! - feed-forward: LayerNorm, Linear(dim, 2 inner), GEGLU (`x, gate = chunk(2); gelu(gate) * x`),
//!   Linear(inner, dim), `inner = int(4 * 2/3 * dim)`;
//! - quantisation: each token becomes the stored codebook row (`vq._codebook.embed`) with the
//!   largest cosine similarity (dot product of the L2-normalised token and rows).
//!
//! Unused parts of the checkpoint (`to_patch_emb_first_frame`, `to_pixels*`, `context_norm`,
//! `null_kv`, `vq._codebook.{initted, cluster_size}`) are loaded strictly and kept, so the state
//! dict round-trips.

use burn::module::{Module, Param};
use burn::nn::conv::Conv3d;
use burn::nn::{Linear, PaddingConfig3d};
use burn::tensor::activation::{gelu, leaky_relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::blocks::{param, ParamKind, ParamSource};
use crate::clip_text::{l2_normalize, linear, Export, LayerNorm, SpecSource};
use crate::error::{ModelError, Result};
use crate::weights::RawTensor;

fn d_dim_head() -> usize {
    64
}
fn d_heads() -> usize {
    8
}
fn d_channels() -> usize {
    1
}
fn d_layout() -> String {
    "HWD".into()
}

/// `CTViT`'s constructor arguments (CT-CLIP names) plus the input depth and layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtVitConfig {
    pub dim: usize,
    pub codebook_size: usize,
    /// Height = width of the input, in voxels.
    pub image_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_depth: usize,
    pub temporal_depth: usize,
    #[serde(default = "d_dim_head")]
    pub dim_head: usize,
    #[serde(default = "d_heads")]
    pub heads: usize,
    #[serde(default = "d_channels")]
    pub channels: usize,
    /// Number of slices (the "frames" axis), a multiple of `temporal_patch_size`.
    pub input_depth: usize,
    /// `"HWD"`: input `(B, C, H, W, D)`, permuted inside (Text2CT). `"DHW"`: input
    /// `(B, C, D, H, W)` (CT-CLIP).
    #[serde(default = "d_layout")]
    pub input_layout: String,
    /// Snap tokens to the codebook (CT-ViT, Text2CT, CT-CLIP: `true`, the default). `false` is a
    /// text2ct option for small models trained from scratch: the continuous tokens are pooled
    /// instead (the codebook keys stay in the state dict, unused). See docs/evaluation/clip.md.
    #[serde(default = "d_true", skip_serializing_if = "is_true")]
    pub quantize: bool,
    /// Normalise each patch's voxels with the patch embedding's first LayerNorm (CT-ViT, Text2CT,
    /// CT-CLIP: `true`, the default). `false` is a text2ct option: that layer applies only its
    /// affine part (`weight * x + bias`, same keys), so a patch keeps its mean intensity. Per-patch
    /// normalisation removes exactly what distinguishes a homogeneous patch of fluid from one of
    /// aerated lung, and blows a near-constant patch (air, ~6 HU of noise) up to unit-variance
    /// noise; on coarse phantoms, where findings are mostly intensity changes of smooth regions,
    /// that leaves the encoder little but noise. See docs/evaluation/clip.md.
    #[serde(default = "d_true", skip_serializing_if = "is_true")]
    pub normalize_patches: bool,
}

fn d_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

impl CtVitConfig {
    /// Text2CT's vision encoder (`FrozenCLIP3D` defaults): input 512 x 512 x 128 (H, W, D).
    pub fn text2ct() -> Self {
        CtVitConfig {
            dim: 768,
            codebook_size: 8192,
            image_size: 512,
            patch_size: 16,
            temporal_patch_size: 16,
            spatial_depth: 4,
            temporal_depth: 4,
            dim_head: 32,
            heads: 8,
            channels: 1,
            input_depth: 128,
            input_layout: "HWD".into(),
            quantize: true,
            normalize_patches: true,
        }
    }

    /// CT-CLIP's encoder (baseline): input (B, 1, 240, 480, 480) as (D, H, W).
    pub fn ct_clip() -> Self {
        CtVitConfig {
            dim: 512,
            codebook_size: 8192,
            image_size: 480,
            patch_size: 20,
            temporal_patch_size: 10,
            spatial_depth: 4,
            temporal_depth: 4,
            dim_head: 32,
            heads: 8,
            channels: 1,
            input_depth: 240,
            input_layout: "DHW".into(),
            quantize: true,
            normalize_patches: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (n, v) in [
            ("dim", self.dim),
            ("codebook_size", self.codebook_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("dim_head", self.dim_head),
            ("heads", self.heads),
            ("channels", self.channels),
            ("input_depth", self.input_depth),
        ] {
            if v == 0 {
                return bad(format!("vision {n} must be positive"));
            }
        }
        if self.image_size % self.patch_size != 0 {
            return bad(format!("image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size));
        }
        if self.input_depth % self.temporal_patch_size != 0 {
            return bad(format!(
                "input_depth {} is not a multiple of temporal_patch_size {}",
                self.input_depth, self.temporal_patch_size
            ));
        }
        if self.ff_inner() == 0 {
            return bad("dim too small for the feed-forward (int(4 * 2/3 * dim) = 0)".into());
        }
        if self.input_layout != "HWD" && self.input_layout != "DHW" {
            return bad(format!("input_layout must be \"HWD\" or \"DHW\", got {:?}", self.input_layout));
        }
        Ok(())
    }

    /// Token grid `(t, h, w)`.
    pub fn grid(&self) -> [usize; 3] {
        let hw = self.image_size / self.patch_size;
        [self.input_depth / self.temporal_patch_size, hw, hw]
    }

    /// Input shape without the batch: `[C, H, W, D]` ("HWD") or `[C, D, H, W]` ("DHW").
    pub fn input_shape(&self) -> [usize; 4] {
        let (c, s, d) = (self.channels, self.image_size, self.input_depth);
        if self.input_layout == "DHW" {
            [c, d, s, s]
        } else {
            [c, s, s, d]
        }
    }

    /// Length of the flattened image feature fed to `visual_projection`: `h * w * dim`
    /// (786,432 for Text2CT).
    pub fn embed_dim(&self) -> usize {
        let [_, h, w] = self.grid();
        h * w * self.dim
    }

    pub fn ff_inner(&self) -> usize {
        (4.0 * (2.0 / 3.0) * self.dim as f64) as usize
    }

    pub fn inner_dim(&self) -> usize {
        self.dim_head * self.heads
    }

    /// Every parameter / buffer by name (no prefix) and shape.
    pub fn param_spec(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut rec = SpecSource::default();
        let _ = CtVit::build(self, &mut rec, &Device::flex());
        Ok(rec.spec)
    }
}

/// The bias-less LayerNorm of CT-CLIP's attention.py: `gamma` parameter, `beta` buffer (zeros in
/// practice, but loaded and applied), eps 1e-5.
#[derive(Module, Debug)]
pub struct BiaslessLayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Tensor<1>,
}

impl BiaslessLayerNorm {
    fn build(src: &mut dyn ParamSource, key: &str, d: usize, dev: &Device) -> Self {
        let gamma = param(src, &format!("{key}.gamma"), [d], ParamKind::Ones, dev);
        let beta = param(src, &format!("{key}.beta"), [d], ParamKind::Zeros, dev).val();
        BiaslessLayerNorm { gamma, beta }
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.gamma.val(), Some(self.beta.clone()), 1e-5)
    }
    fn export(&self, ex: &mut Export, key: &str) {
        ex.put(format!("{key}.gamma"), self.gamma.val());
        ex.put(format!("{key}.beta"), self.beta.clone());
    }
}

/// `nn.Sequential(Rearrange, LayerNorm(p), Linear(p, dim), LayerNorm(dim))` (keys `.1`, `.2`, `.3`).
/// With `normalize = false` ([`CtVitConfig::normalize_patches`]) the first LayerNorm applies only
/// its affine part.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub norm_in: LayerNorm,
    pub proj: Linear,
    pub norm_out: LayerNorm,
    pub normalize: bool,
}

impl PatchEmbed {
    fn build(src: &mut dyn ParamSource, key: &str, p: usize, dim: usize, normalize: bool, dev: &Device) -> Self {
        PatchEmbed {
            norm_in: LayerNorm::build(src, &format!("{key}.1"), p, 1e-5, dev),
            proj: linear(src, &format!("{key}.2"), p, dim, true, dev),
            norm_out: LayerNorm::build(src, &format!("{key}.3"), dim, 1e-5, dev),
            normalize,
        }
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = if self.normalize {
            self.norm_in.forward(x)
        } else {
            let shape = {
                let mut s = [1usize; D];
                s[D - 1] = self.norm_in.gamma.dims()[0];
                s
            };
            x * self.norm_in.gamma.val().reshape(shape) + self.norm_in.beta.val().reshape(shape)
        };
        self.norm_out.forward(self.proj.forward(x))
    }
    fn export(&self, ex: &mut Export, key: &str) {
        ex.layer_norm(&format!("{key}.1"), &self.norm_in);
        ex.linear(&format!("{key}.2"), &self.proj);
        ex.layer_norm(&format!("{key}.3"), &self.norm_out);
    }
}

/// `ContinuousPositionBias(dim, heads, num_dims=2, layers=2, log_dist=True)`.
#[derive(Module, Debug)]
pub struct ContinuousPositionBias {
    pub net0: Linear,
    pub net1: Linear,
    pub net2: Linear,
}

impl ContinuousPositionBias {
    fn build(src: &mut dyn ParamSource, key: &str, dim: usize, heads: usize, dev: &Device) -> Self {
        ContinuousPositionBias {
            net0: linear(src, &format!("{key}.net.0.0"), 2, dim, true, dev),
            net1: linear(src, &format!("{key}.net.1.0"), dim, dim, true, dev),
            net2: linear(src, &format!("{key}.net.2"), dim, heads, true, dev),
        }
    }

    /// The bias `[heads, h*w, h*w]`. The MLP runs on the `(2h-1)(2w-1)` distinct offsets and the
    /// result is gathered (the reference runs it on all `(hw)^2` pairs; same values).
    pub fn forward(&self, h: usize, w: usize, dev: &Device) -> Tensor<3> {
        let (nh, nw) = (2 * h - 1, 2 * w - 1);
        let f = |d: i64| (d.signum() as f32) * ((d.abs() as f32) + 1.0).ln();
        let mut rel = Vec::with_capacity(nh * nw * 2);
        for di in -(h as i64 - 1)..=(h as i64 - 1) {
            for dj in -(w as i64 - 1)..=(w as i64 - 1) {
                rel.push(f(di));
                rel.push(f(dj));
            }
        }
        let x = Tensor::<2>::from_data(TensorData::new(rel, [nh * nw, 2]), dev);
        let x = leaky_relu(self.net0.forward(x), 0.1);
        let x = leaky_relu(self.net1.forward(x), 0.1);
        let table = self.net2.forward(x); // [nh*nw, heads]
        let heads = table.dims()[1];
        let n = h * w;
        let mut idx = Vec::with_capacity(n * n);
        for i in 0..n {
            let (ih, iw) = ((i / w) as i64, (i % w) as i64);
            for j in 0..n {
                let (jh, jw) = ((j / w) as i64, (j % w) as i64);
                let a = (ih - jh + h as i64 - 1) as usize;
                let b = (iw - jw + w as i64 - 1) as usize;
                idx.push((a * nw + b) as i64);
            }
        }
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n * n]), dev);
        table.select(0, idx).reshape([n, n, heads]).permute([2, 0, 1])
    }

    fn export(&self, ex: &mut Export, key: &str) {
        ex.linear(&format!("{key}.net.0.0"), &self.net0);
        ex.linear(&format!("{key}.net.1.0"), &self.net1);
        ex.linear(&format!("{key}.net.2"), &self.net2);
    }
}

/// CT-CLIP's `Attention` (self-attention use; cross-attention parts are loaded, unused).
#[derive(Module, Debug)]
pub struct CtAttention {
    pub norm: BiaslessLayerNorm,
    pub context_norm: BiaslessLayerNorm,
    pub to_q: Linear,
    pub to_kv: Linear,
    pub to_out: Linear,
    pub q_scale: Param<Tensor<1>>,
    pub k_scale: Param<Tensor<1>>,
    pub heads: usize,
    pub dim_head: usize,
}

impl CtAttention {
    fn build(src: &mut dyn ParamSource, key: &str, cfg: &CtVitConfig, dev: &Device) -> Self {
        let (dim, inner, h, dh) = (cfg.dim, cfg.inner_dim(), cfg.heads, cfg.dim_head);
        // null_kv [heads, 2 * num_null_kv = 0, dim_head]: empty, checked for shape only.
        let _ = src.take(&format!("{key}.null_kv"), &[h, 0, dh], ParamKind::Zeros);
        let q_scale = param(src, &format!("{key}.q_scale"), [dh], ParamKind::Ones, dev);
        let k_scale = param(src, &format!("{key}.k_scale"), [dh], ParamKind::Ones, dev);
        let norm = BiaslessLayerNorm::build(src, &format!("{key}.norm"), dim, dev);
        let context_norm = BiaslessLayerNorm::build(src, &format!("{key}.context_norm"), dim, dev);
        let to_q = linear(src, &format!("{key}.to_q"), dim, inner, false, dev);
        let to_kv = linear(src, &format!("{key}.to_kv"), dim, 2 * inner, false, dev);
        let to_out = linear(src, &format!("{key}.to_out"), inner, dim, false, dev);
        CtAttention { norm, context_norm, to_q, to_kv, to_out, q_scale, k_scale, heads: h, dim_head: dh }
    }

    /// `x` `[N, n, dim]`; `bias` `[heads, n, n]`.
    pub fn forward(&self, x: Tensor<3>, bias: Option<Tensor<3>>) -> Tensor<3> {
        let [bn, n, _] = x.dims();
        let (h, dh) = (self.heads, self.dim_head);
        // Quirk of the reference: k and v come from the input *before* the norm
        // (`kv_input = default(context, x)` is taken before `x = self.norm(x)`).
        let q = self.to_q.forward(self.norm.forward(x.clone()));
        let mut kv = self.to_kv.forward(x).chunk(2, 2);
        let v = kv.pop().expect("two chunks");
        let k = kv.pop().expect("two chunks");
        let split = |t: Tensor<3>| t.reshape([bn, n, h, dh]).swap_dims(1, 2);
        let (q, k, v) = (split(q), split(k), split(v));
        let qs = self.q_scale.val().reshape([1, 1, 1, dh]);
        let ks = self.k_scale.val().reshape([1, 1, 1, dh]);
        let q = l2_normalize(q) * qs;
        let k = l2_normalize(k) * ks;
        let mut sim = q.matmul(k.swap_dims(2, 3)).mul_scalar(8.0);
        if let Some(b) = bias {
            sim = sim + b.unsqueeze_dim::<4>(0);
        }
        let attn = softmax(sim, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([bn, n, h * dh]);
        self.to_out.forward(out)
    }

    fn export(&self, ex: &mut Export, key: &str) {
        ex.raw(format!("{key}.null_kv"), RawTensor::new(vec![self.heads, 0, self.dim_head], vec![]));
        ex.put(format!("{key}.q_scale"), self.q_scale.val());
        ex.put(format!("{key}.k_scale"), self.k_scale.val());
        self.norm.export(ex, &format!("{key}.norm"));
        self.context_norm.export(ex, &format!("{key}.context_norm"));
        ex.linear(&format!("{key}.to_q"), &self.to_q);
        ex.linear(&format!("{key}.to_kv"), &self.to_kv);
        ex.linear(&format!("{key}.to_out"), &self.to_out);
    }
}

/// One transformer layer: PEG (`.0.dsconv`), attention (`.1`), feed-forward (`.3.{0,1,4}`).
#[derive(Module, Debug)]
pub struct CtLayer {
    pub peg: Conv3d,
    pub attn: CtAttention,
    pub ff_norm: LayerNorm,
    pub ff_in: Linear,
    pub ff_out: Linear,
}

impl CtLayer {
    fn build(src: &mut dyn ParamSource, key: &str, cfg: &CtVitConfig, dev: &Device) -> Self {
        let d = cfg.dim;
        let weight = param(src, &format!("{key}.0.dsconv.weight"), [d, 1, 3, 3, 3], ParamKind::Fan(27), dev);
        let bias = param(src, &format!("{key}.0.dsconv.bias"), [d], ParamKind::Fan(27), dev);
        let peg = Conv3d {
            weight,
            bias: Some(bias),
            stride: [1; 3],
            kernel_size: [3; 3],
            dilation: [1; 3],
            groups: d,
            padding: PaddingConfig3d::Explicit(0, 0, 0),
        };
        let attn = CtAttention::build(src, &format!("{key}.1"), cfg, dev);
        let inner = cfg.ff_inner();
        let ff_norm = LayerNorm::build(src, &format!("{key}.3.0"), d, 1e-5, dev);
        let ff_in = linear(src, &format!("{key}.3.1"), d, 2 * inner, false, dev);
        let ff_out = linear(src, &format!("{key}.3.4"), inner, d, false, dev);
        CtLayer { peg, attn, ff_norm, ff_in, ff_out }
    }

    /// PEG on `x` `[N, n, d]` viewed (row-major reshape, as torch's `reshape`) as `shape` = (b, t, h, w).
    fn peg(&self, x: Tensor<3>, shape: [usize; 4]) -> Tensor<3> {
        let dims = x.dims();
        let d = dims[2];
        let [b, t, h, w] = shape;
        let g = x.reshape([b, t, h, w, d]).permute([0, 4, 1, 2, 3]);
        let g = g.pad([(2, 0), (1, 1), (1, 1)], 0.0f32);
        let g = self.peg.forward(g).permute([0, 2, 3, 4, 1]);
        g.reshape(dims)
    }

    fn forward(&self, x: Tensor<3>, shape: [usize; 4], bias: Option<Tensor<3>>) -> Tensor<3> {
        let x = self.peg(x.clone(), shape) + x;
        let x = self.attn.forward(x.clone(), bias) + x;
        let h = self.ff_in.forward(self.ff_norm.forward(x.clone()));
        let mut parts = h.chunk(2, 2);
        let gate = parts.pop().expect("two chunks");
        let a = parts.pop().expect("two chunks");
        x + self.ff_out.forward(gelu(gate) * a)
    }

    fn export(&self, ex: &mut Export, key: &str) {
        ex.put(format!("{key}.0.dsconv.weight"), self.peg.weight.val());
        if let Some(b) = &self.peg.bias {
            ex.put(format!("{key}.0.dsconv.bias"), b.val());
        }
        self.attn.export(ex, &format!("{key}.1"));
        ex.layer_norm(&format!("{key}.3.0"), &self.ff_norm);
        ex.linear(&format!("{key}.3.1"), &self.ff_in);
        ex.linear(&format!("{key}.3.4"), &self.ff_out);
    }
}

/// CT-CLIP's `Transformer` (PEG, no cross-attention) with its bias-less `norm_out`.
#[derive(Module, Debug)]
pub struct CtTransformer {
    pub layers: Vec<CtLayer>,
    pub norm_out: BiaslessLayerNorm,
}

impl CtTransformer {
    fn build(src: &mut dyn ParamSource, key: &str, depth: usize, cfg: &CtVitConfig, dev: &Device) -> Self {
        let layers = (0..depth).map(|i| CtLayer::build(src, &format!("{key}.layers.{i}"), cfg, dev)).collect();
        let norm_out = BiaslessLayerNorm::build(src, &format!("{key}.norm_out"), cfg.dim, dev);
        CtTransformer { layers, norm_out }
    }

    pub fn forward(&self, mut x: Tensor<3>, video_shape: [usize; 4], bias: Option<Tensor<3>>) -> Tensor<3> {
        for l in &self.layers {
            x = l.forward(x, video_shape, bias.clone());
        }
        self.norm_out.forward(x)
    }

    fn export(&self, ex: &mut Export, key: &str) {
        for (i, l) in self.layers.iter().enumerate() {
            l.export(ex, &format!("{key}.layers.{i}"));
        }
        self.norm_out.export(ex, &format!("{key}.norm_out"));
    }
}

/// `vq._codebook` of `VectorQuantize(dim, codebook_size, use_cosine_sim=True)` (buffers).
#[derive(Module, Debug)]
pub struct CosineCodebook {
    /// `embed[0]`: `[codebook_size, dim]`.
    pub embed: Tensor<2>,
    pub initted: Tensor<1>,
    pub cluster_size: Tensor<2>,
}

impl CosineCodebook {
    /// Code index per row of `x` `[n, dim]`: argmax of `l2norm(x) . l2norm(embed)^T`.
    pub fn indices(&self, x: Tensor<2>) -> Tensor<1, Int> {
        let n = x.dims()[0];
        let e = l2_normalize(self.embed.clone()).transpose();
        let xn = l2_normalize(x);
        const CHUNK: usize = 2048;
        let parts: Vec<Tensor<1, Int>> = (0..n)
            .step_by(CHUNK)
            .map(|s| {
                let len = CHUNK.min(n - s);
                xn.clone().narrow(0, s, len).matmul(e.clone()).argmax(1).reshape([len])
            })
            .collect();
        Tensor::cat(parts, 0)
    }

    /// Quantise `x` `[n, dim]`: the stored rows at [`CosineCodebook::indices`] (as at eval: no
    /// straight-through term) and the indices.
    pub fn quantize(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<1, Int>) {
        let idx = self.indices(x);
        (self.embed.clone().select(0, idx.clone()), idx)
    }

    /// One training-mode EMA update of the codebook, exactly as `CosineSimCodebook.forward` of
    /// `vector-quantize-pytorch` 1.1.2 does it with `threshold_ema_dead_code = 0` (CT-ViT's
    /// setting): with `x` the `[n, dim]` tokens and `idx` their codes (from
    /// [`CosineCodebook::indices`], computed *before* this update),
    /// `bins_c = #{i: idx_i = c}`, `cluster_size <- lerp(cluster_size, bins, 1 - decay)`,
    /// `m_c = l2norm(sum_{idx_i = c} l2norm(x_i) / max(bins_c, 1))` (or `l2norm(embed_c)` for an
    /// unused code), `embed <- lerp(embed, m, 1 - decay)`. The reference's default decay is 0.8.
    ///
    /// Runs on host memory (the codebook is a buffer without gradient): `O(n·dim + codebook·dim)`.
    pub fn ema_update(&mut self, x: Tensor<2>, idx: Tensor<1, Int>, decay: f32) {
        let [n, d] = x.dims();
        let [k, _] = self.embed.dims();
        let dev = self.embed.device();
        let xs: Vec<f32> = x.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tokens");
        let ids: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec::<i64>().expect("int codes");
        let mut embed: Vec<f32> =
            self.embed.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 codebook");
        let mut cluster: Vec<f32> =
            self.cluster_size.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 sizes");
        let mut bins = vec![0f32; k];
        let mut sums = vec![0f32; k * d];
        for (i, &c) in ids.iter().enumerate().take(n) {
            let c = c as usize;
            let row = &xs[i * d..(i + 1) * d];
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            bins[c] += 1.0;
            for (s, v) in sums[c * d..(c + 1) * d].iter_mut().zip(row) {
                *s += v / norm;
            }
        }
        let l2 = |v: &mut [f32]| {
            let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= nrm);
        };
        let w = 1.0 - decay;
        for c in 0..k {
            cluster[c] += w * (bins[c] - cluster[c]);
            let mut m: Vec<f32> = if bins[c] == 0.0 {
                embed[c * d..(c + 1) * d].to_vec()
            } else {
                sums[c * d..(c + 1) * d].iter().map(|s| s / bins[c]).collect()
            };
            l2(&mut m);
            for (e, mv) in embed[c * d..(c + 1) * d].iter_mut().zip(&m) {
                *e += w * (mv - *e);
            }
        }
        self.embed = Tensor::<2>::from_data(TensorData::new(embed, [k, d]), &dev);
        self.cluster_size = Tensor::<2>::from_data(TensorData::new(cluster, [1, k]), &dev);
    }
}

/// CT-ViT's encoder half (what the CLIP uses) and the unused decoder heads of the checkpoint.
#[derive(Module, Debug)]
pub struct CtVit {
    pub spatial_rel_pos_bias: ContinuousPositionBias,
    pub to_patch_emb_first_frame: PatchEmbed,
    pub to_patch_emb: PatchEmbed,
    pub enc_spatial_transformer: CtTransformer,
    pub enc_temporal_transformer: CtTransformer,
    pub vq: CosineCodebook,
    pub to_pixels_first_frame: Linear,
    pub to_pixels: Linear,
    /// `[t, h, w]`, `[patch, temporal patch]`, channels and `true` for the "HWD" layout.
    pub grid: [usize; 3],
    pub patch: [usize; 2],
    pub channels: usize,
    pub hwd: bool,
    /// [`CtVitConfig::quantize`].
    pub use_vq: bool,
}

impl CtVit {
    /// Build from a source with CT-CLIP's key names (no prefix), in the reference's order.
    pub(crate) fn build(cfg: &CtVitConfig, src: &mut dyn ParamSource, dev: &Device) -> Self {
        let (d, c, p, pt) = (cfg.dim, cfg.channels, cfg.patch_size, cfg.temporal_patch_size);
        let spatial_rel_pos_bias = ContinuousPositionBias::build(src, "spatial_rel_pos_bias", d, cfg.heads, dev);
        let to_patch_emb_first_frame =
            PatchEmbed::build(src, "to_patch_emb_first_frame", c * p * p, d, cfg.normalize_patches, dev);
        let to_patch_emb = PatchEmbed::build(src, "to_patch_emb", c * pt * p * p, d, cfg.normalize_patches, dev);
        let enc_spatial_transformer = CtTransformer::build(src, "enc_spatial_transformer", cfg.spatial_depth, cfg, dev);
        let enc_temporal_transformer =
            CtTransformer::build(src, "enc_temporal_transformer", cfg.temporal_depth, cfg, dev);
        let k = cfg.codebook_size;
        let initted = param(src, "vq._codebook.initted", [1], ParamKind::Ones, dev).val();
        let cluster_size = param(src, "vq._codebook.cluster_size", [1, k], ParamKind::Zeros, dev).val();
        let embed = src.take("vq._codebook.embed", &[1, k, d], ParamKind::Fan(1));
        let embed = Tensor::<2>::from_data(TensorData::new(embed, [k, d]), dev);
        let vq = CosineCodebook { embed, initted, cluster_size };
        let to_pixels_first_frame = linear(src, "to_pixels_first_frame.0", d, c * p * p, true, dev);
        let to_pixels = linear(src, "to_pixels.0", d, c * pt * p * p, true, dev);
        CtVit {
            spatial_rel_pos_bias,
            to_patch_emb_first_frame,
            to_patch_emb,
            enc_spatial_transformer,
            enc_temporal_transformer,
            vq,
            to_pixels_first_frame,
            to_pixels,
            grid: cfg.grid(),
            patch: [p, pt],
            channels: c,
            hwd: cfg.input_layout != "DHW",
            use_vq: cfg.quantize,
        }
    }

    /// Build from any parameter source (fresh: [`crate::blocks::InitSource`]; a state dict
    /// without prefix: [`crate::blocks::StateDictSource`], then call its `finish`).
    pub fn build_from(cfg: &CtVitConfig, src: &mut dyn ParamSource, dev: &Device) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::build(cfg, src, dev))
    }

    /// Expected input shape `[C, ., ., .]` (without the batch).
    pub fn input_shape(&self) -> [usize; 4] {
        let [t, h, w] = self.grid;
        let [p, pt] = self.patch;
        if self.hwd {
            [self.channels, h * p, w * p, t * pt]
        } else {
            [self.channels, t * pt, h * p, w * p]
        }
    }

    pub fn check_input(&self, dims: [usize; 5]) -> Result<()> {
        let want = self.input_shape();
        if dims[0] == 0 || dims[1..] != want[..] {
            let layout = if self.hwd { "(B, C, H, W, D)" } else { "(B, C, D, H, W)" };
            return Err(ModelError::Invalid(format!(
                "CT-ViT input must be {layout} = [B>=1, {}, {}, {}, {}]; got {dims:?}",
                want[0], want[1], want[2], want[3]
            )));
        }
        Ok(())
    }

    /// Patch embedding: `[B, t, h, w, dim]`.
    pub fn patch_embed(&self, video: Tensor<5>) -> Tensor<5> {
        let b = video.dims()[0];
        let [t, h, w] = self.grid;
        let [p, pt] = self.patch;
        let c = self.channels;
        let patches: Tensor<8> = if self.hwd {
            // (B, C, H, W, D) = (b, c, (h p1), (w p2), (t pt)) -> b t h w c pt p1 p2
            video.reshape([b, c, h, p, w, p, t, pt]).permute([0, 6, 2, 4, 1, 7, 3, 5])
        } else {
            video.reshape([b, c, t, pt, h, p, w, p]).permute([0, 2, 4, 6, 1, 3, 5, 7])
        };
        let x: Tensor<5> = patches.reshape([b, t, h, w, c * pt * p * p]);
        self.to_patch_emb.forward(x)
    }

    /// Spatial then temporal transformer (`CTViT.encode`): `[B, t, h, w, dim]` -> same, before
    /// quantisation.
    pub fn encode_tokens(&self, tokens: Tensor<5>) -> Tensor<5> {
        let [b, t, h, w, d] = tokens.dims();
        let dev = tokens.device();
        let shape = [b, t, h, w];
        let bias = self.spatial_rel_pos_bias.forward(h, w, &dev);
        let x = tokens.reshape([b * t, h * w, d]);
        let x = self.enc_spatial_transformer.forward(x, shape, Some(bias));
        let x = x.reshape([b, t, h, w, d]).permute([0, 2, 3, 1, 4]).reshape([b * h * w, t, d]);
        let x = self.enc_temporal_transformer.forward(x, shape, None);
        x.reshape([b, h, w, t, d]).permute([0, 3, 1, 2, 4])
    }

    /// Quantise a token grid `[B, t, h, w, dim]`: (quantised grid, code indices `[B, t*h*w]`).
    pub fn quantize(&self, tokens: Tensor<5>) -> (Tensor<5>, Tensor<2, Int>) {
        let dims = tokens.dims();
        let [b, t, h, w, d] = dims;
        let (q, idx) = self.vq.quantize(tokens.reshape([b * t * h * w, d]));
        (q.reshape(dims), idx.reshape([b, t * h * w]))
    }

    /// `CTViT(video, return_encoded_tokens=True)`: the quantised token grid `[B, t, h, w, dim]`.
    ///
    /// # Panics
    /// On an input that fails [`CtVit::check_input`].
    pub fn forward(&self, video: Tensor<5>) -> Tensor<5> {
        if let Err(e) = self.check_input(video.dims()) {
            panic!("{e}");
        }
        let tokens = self.encode_tokens(self.patch_embed(video));
        if self.use_vq {
            self.quantize(tokens).0
        } else {
            tokens
        }
    }

    pub(crate) fn export(&self, ex: &mut Export, key: &str) {
        let k = |s: &str| format!("{key}.{s}");
        self.spatial_rel_pos_bias.export(ex, &k("spatial_rel_pos_bias"));
        self.to_patch_emb_first_frame.export(ex, &k("to_patch_emb_first_frame"));
        self.to_patch_emb.export(ex, &k("to_patch_emb"));
        self.enc_spatial_transformer.export(ex, &k("enc_spatial_transformer"));
        self.enc_temporal_transformer.export(ex, &k("enc_temporal_transformer"));
        ex.put(k("vq._codebook.initted"), self.vq.initted.clone());
        ex.put(k("vq._codebook.cluster_size"), self.vq.cluster_size.clone());
        let [kk, d] = self.vq.embed.dims();
        ex.put_shaped(k("vq._codebook.embed"), self.vq.embed.clone(), vec![1, kk, d]);
        ex.linear(&k("to_pixels_first_frame.0"), &self.to_pixels_first_frame);
        ex.linear(&k("to_pixels.0"), &self.to_pixels);
    }
}

/// Mean over t of the quantised grid, flattened: `[B, h*w*dim]` (Text2CT's `encode_vision`).
pub fn pool_tokens(q: Tensor<5>) -> Tensor<2> {
    let [b, _, h, w, d] = q.dims();
    q.mean_dim(1).reshape([b, h * w * d])
}

/// Key names for documentation/tests (no prefix).
pub fn ctvit_keys(cfg: &CtVitConfig) -> Result<Vec<String>> {
    Ok(cfg.param_spec()?.into_iter().map(|(k, _)| k).collect())
}
