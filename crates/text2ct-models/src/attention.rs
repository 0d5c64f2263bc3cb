//! Attention and transformer pieces of MONAI's diffusion U-Net, built from a [`ParamSource`] with
//! MONAI's state-dict names.
//!
//! - [`Attention`]: MONAI `SABlock` / `CrossAttentionBlock` with separate `to_q`, `to_k`, `to_v`
//!   (no bias) and an `out_proj` (with bias; absent for `SABlock(include_fc=False)`). Heads are
//!   split channel-wise as `(head, head_dim)` with the head outermost (einops `(l d)`), scale
//!   `head_dim^-0.5`, plain softmax attention (what `scaled_dot_product_attention` computes too).
//! - [`GegluMlp`]: MONAI `MLPBlock(act="GEGLU")`: `linear1` C→2·4C, split the last axis in two
//!   halves `a | b`, `a * gelu_exact(b)`, `linear2` 4C→C.
//! - [`TransformerBlock`]: `DiffusionUNetTransformerBlock`: `x += attn1(norm1(x))`,
//!   `x += attn2(norm2(x), context)`, `x += ff(norm3(x))`; LayerNorm eps 1e-5.
//! - [`SpatialTransformer`]: GroupNorm → 1x1x1 `proj_in` → tokens in `(H, W, D)` order with D
//!   fastest → transformer blocks → back to a volume → 1x1x1 `proj_out` → + input.
//!
//! Dropout (MONAI `dropout_cattn`) is not implemented: the U-Net config refuses a non-zero value.

use burn::module::Module;
use burn::nn::conv::Conv3d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::blocks::{conv3d, group_norm, param, ParamKind, ParamSource};

/// A `torch.nn.Linear` from `{key}.weight` `[dout, din]` (and `{key}.bias` `[dout]` when `bias`).
/// burn stores the weight as `[din, dout]`, so the values are transposed here.
pub fn linear(src: &mut dyn ParamSource, key: &str, din: usize, dout: usize, bias: bool, device: &Device) -> Linear {
    let w = src.take(&format!("{key}.weight"), &[dout, din], ParamKind::Fan(din));
    let mut t = vec![0.0f32; din * dout];
    for o in 0..dout {
        for i in 0..din {
            t[i * dout + o] = w[o * din + i];
        }
    }
    let weight = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(t, [din, dout]), device));
    let bias = bias.then(|| param(src, &format!("{key}.bias"), [dout], ParamKind::Fan(din), device));
    Linear { weight, bias }
}

/// A `torch.nn.LayerNorm(dim)` (eps 1e-5, affine) from `{key}.weight` / `{key}.bias`.
pub fn layer_norm(src: &mut dyn ParamSource, key: &str, dim: usize, device: &Device) -> LayerNorm {
    let mut ln = LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
    ln.gamma = param(src, &format!("{key}.weight"), [dim], ParamKind::Ones, device);
    ln.beta = Some(param(src, &format!("{key}.bias"), [dim], ParamKind::Zeros, device));
    ln
}

/// Multi-head (self- or cross-) attention, MONAI `SABlock` / `CrossAttentionBlock`
/// (`use_combined_linear=False`, `qkv_bias=False`).
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `None` for `SABlock(include_fc=False)` (then `inner_dim` must equal the input width).
    pub out_proj: Option<Linear>,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `dim`: query input width; `context_dim`: key/value input width (= `dim` for self-attention);
    /// `inner = heads * head_dim`. MONAI registers `out_proj` before `to_q/k/v`; the keys are
    /// taken in that order.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        src: &mut dyn ParamSource,
        key: &str,
        dim: usize,
        context_dim: usize,
        num_heads: usize,
        head_dim: usize,
        include_fc: bool,
        device: &Device,
    ) -> Self {
        let inner = num_heads * head_dim;
        let out_proj = include_fc.then(|| linear(src, &format!("{key}.out_proj"), inner, dim, true, device));
        let to_q = linear(src, &format!("{key}.to_q"), dim, inner, false, device);
        let to_k = linear(src, &format!("{key}.to_k"), context_dim, inner, false, device);
        let to_v = linear(src, &format!("{key}.to_v"), context_dim, inner, false, device);
        Attention { to_q, to_k, to_v, out_proj, num_heads, head_dim }
    }

    /// Width the keys and values are projected from.
    pub fn context_dim(&self) -> usize {
        self.to_k.weight.dims()[0]
    }

    /// `x` `[B, N, dim]`, `kv` `[B, M, context_dim]` → `[B, N, dim]`.
    pub fn forward(&self, x: Tensor<3>, kv: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let m = kv.dims()[1];
        let (h, d) = (self.num_heads, self.head_dim);
        let q = self.to_q.forward(x);
        let (k, v) = (self.to_k.forward(kv.clone()), self.to_v.forward(kv));
        // Long sequences on the CPU: the tiled kernel on the `[B, N, h·d]` layout as it is; else
        // burn's attention on `[B, h, N, d]`.
        let o = crate::fastattn::attention(&q, &k, &v, h, (d as f32).powf(-0.5)).unwrap_or_else(|| {
            let split = |t: Tensor<3>, len: usize| t.reshape([b, len, h, d]).swap_dims(1, 2);
            let opts = AttentionModuleOptions { scale: Some((d as f64).powf(-0.5)), softcap: None, is_causal: false };
            let o = attention(split(q, n), split(k, m), split(v, m), None, None, opts); // [B, h, N, d]
            o.swap_dims(1, 2).reshape([b, n, h * d])
        });
        match &self.out_proj {
            Some(p) => p.forward(o),
            None => o,
        }
    }
}

/// MONAI `MLPBlock(hidden_size=C, mlp_dim=4C, act="GEGLU")`.
#[derive(Module, Debug)]
pub struct GegluMlp {
    pub linear1: Linear,
    pub linear2: Linear,
}

impl GegluMlp {
    pub fn build(src: &mut dyn ParamSource, key: &str, dim: usize, device: &Device) -> Self {
        let linear1 = linear(src, &format!("{key}.linear1"), dim, dim * 8, true, device);
        let linear2 = linear(src, &format!("{key}.linear2"), dim * 4, dim, true, device);
        GegluMlp { linear1, linear2 }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.linear1.forward(x);
        let half = h.dims()[2] / 2;
        let a = h.clone().narrow(2, 0, half);
        let g = h.narrow(2, half, half);
        self.linear2.forward(a * gelu(g))
    }
}

/// MONAI `DiffusionUNetTransformerBlock`.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub attn1: Attention,
    pub ff: GegluMlp,
    pub attn2: Attention,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
}

impl TransformerBlock {
    /// Keys in MONAI's registration order: `attn1.*`, `ff.*`, `attn2.*`, `norm1..3.*`.
    /// `cross_dim`: the context width (`cross_attention_dim`; `dim` when there is none).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        src: &mut dyn ParamSource,
        key: &str,
        dim: usize,
        num_heads: usize,
        head_dim: usize,
        cross_dim: usize,
        include_fc: bool,
        device: &Device,
    ) -> Self {
        let attn1 = Attention::build(src, &format!("{key}.attn1"), dim, dim, num_heads, head_dim, include_fc, device);
        let ff = GegluMlp::build(src, &format!("{key}.ff"), dim, device);
        // CrossAttentionBlock always has its out_proj.
        let attn2 = Attention::build(src, &format!("{key}.attn2"), dim, cross_dim, num_heads, head_dim, true, device);
        let norm1 = layer_norm(src, &format!("{key}.norm1"), dim, device);
        let norm2 = layer_norm(src, &format!("{key}.norm2"), dim, device);
        let norm3 = layer_norm(src, &format!("{key}.norm3"), dim, device);
        TransformerBlock { attn1, ff, attn2, norm1, norm2, norm3 }
    }

    /// `x` `[B, N, dim]`; `context` `[B, M, cross_dim]` or `None` (then the cross-attention
    /// attends to `norm2(x)` itself, as MONAI does; the caller checks the widths agree).
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let h = self.norm1.forward(x.clone());
        let x = self.attn1.forward(h.clone(), h) + x;
        let h = self.norm2.forward(x.clone());
        let kv = match context {
            Some(c) => c.clone(),
            None => h.clone(),
        };
        let x = self.attn2.forward(h, kv) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// MONAI `SpatialTransformer` (3D).
#[derive(Module, Debug)]
pub struct SpatialTransformer {
    pub norm: GroupNorm,
    pub proj_in: Conv3d,
    pub transformer_blocks: Vec<TransformerBlock>,
    pub proj_out: Conv3d,
}

impl SpatialTransformer {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        src: &mut dyn ParamSource,
        key: &str,
        channels: usize,
        num_heads: usize,
        head_dim: usize,
        num_layers: usize,
        groups: usize,
        eps: f64,
        cross_dim: usize,
        include_fc: bool,
        device: &Device,
    ) -> Self {
        let inner = num_heads * head_dim;
        let norm = group_norm(src, &format!("{key}.norm"), groups, channels, eps, device);
        let proj_in = conv3d(src, &format!("{key}.proj_in.conv"), channels, inner, 1, 1, 0, device);
        let transformer_blocks = (0..num_layers)
            .map(|i| {
                TransformerBlock::build(
                    src,
                    &format!("{key}.transformer_blocks.{i}"),
                    inner,
                    num_heads,
                    head_dim,
                    cross_dim,
                    include_fc,
                    device,
                )
            })
            .collect();
        let proj_out = conv3d(src, &format!("{key}.proj_out.conv"), inner, channels, 1, 1, 0, device);
        SpatialTransformer { norm, proj_in, transformer_blocks, proj_out }
    }

    /// `x` `[B, C, H, W, D]` → same shape.
    pub fn forward(&self, x: Tensor<5>, context: Option<&Tensor<3>>) -> Tensor<5> {
        let [b, _, h, w, d] = x.dims();
        let y = self.proj_in.forward(crate::blocks::group_norm_forward(&self.norm, x.clone()));
        let inner = y.dims()[1];
        let mut t: Tensor<3> = y.permute([0, 2, 3, 4, 1]).reshape([b, h * w * d, inner]);
        for blk in &self.transformer_blocks {
            t = blk.forward(t, context);
        }
        let y: Tensor<5> = t.reshape([b, h, w, d, inner]).permute([0, 4, 1, 2, 3]);
        self.proj_out.forward(y) + x
    }
}
