//! Neural networks of text2ct (burn): MAISI VAE, diffusion U-Net, 3D CLIP.
//!
//! - [`vae`]: MONAI's `AutoencoderKlMaisi` (encode / decode / sliding-window decode), loading
//!   MONAI `.pt` or `.safetensors` weights strictly.
//! - [`blocks`]: shared building blocks (ResBlock, down/upsample) and parameter sources.
//! - [`interp`]: 3D interpolation burn lacks (trilinear x2, nearest repeat).
//! - [`sliding`]: MONAI-compatible sliding-window inference; [`splitdecode`]: one-pass decoding
//!   of a whole latent in slabs with whole-tensor GroupNorm statistics (bounded temporaries).
//! - [`speed`]: what the speed benchmarks share (peak RSS, thread pools, synthetic inputs, memory
//!   estimates).
//! - [`weights`]: reading PyTorch / safetensors state dicts.
//! - [`resnet2d`], [`resnet3d`]: evaluation backbones: torchvision / RadImageNet 2D ResNets and
//!   MedicalNet / MONAI 3D ResNets (feature extractors for the FID), strict PyTorch-key loading;
//!   [`ctnet`]: the CT-Net classifier (its penultimate features serve the phantom FID).
//! - [`clip_text`], [`ctvit`], [`clip3d`]: Text2CT's 3D CLIP (CLIP text transformer, CT-ViT with
//!   vector quantisation, the CLIP3D wrapper with strict checkpoint loading and the InfoNCE loss).
//! - [`minilm`]: a BERT sentence encoder (all-MiniLM-L6-v2: `BertModel` + mean pooling + L2 normalise),
//!   the text encoder never aligned with CT of the CLIP ablation.
//! - [`precision`]: f32 or bf16 convolution kernels per model ([`Precision`]) and their
//!   packed-weight cache; the kernels themselves in [`directconv`] and [`bf16conv`].
//! - [`device`]: choosing the compute device by name (`cpu`, `wgpu[:N]` in GPU builds).
//! - [`unet`]: MONAI's `DiffusionModelUNetMaisi` (Text2CT's latent diffusion U-Net), with the
//!   attention / transformer pieces in [`attention`].

pub mod attention;
pub mod bf16conv;
pub mod blocks;
pub mod clip3d;
pub mod clip_text;
pub mod ctnet;
pub mod ctvit;
pub mod device;
pub mod directconv;
pub mod error;
pub mod fastattn;
pub mod fusednorm;
pub mod interp;
pub mod memory;
pub mod minilm;
pub mod precision;
pub mod resnet2d;
pub mod resnet3d;
pub mod sliding;
pub mod speed;
pub mod splitdecode;
pub mod unet;
pub mod vae;
pub mod weights;

/// The burn version the models are built with (so dependents need not name it).
pub use burn;
pub use clip3d::{clip_loss, clip_loss_with_negatives, Clip3d, Clip3dConfig, ClipVisionEncoder};
pub use clip_text::{ClipTextConfig, ClipTextEncoder};
pub use ctvit::{CtVit, CtVitConfig};
pub use error::{ModelError, Result};
pub use minilm::{MiniLm, MiniLmConfig};
pub use precision::Precision;
/// `.npy` arrays come from the I/O crate (one implementation for the whole project).
pub use text2ct_io::npy::NpyArray;
pub use unet::{Unet, UnetCheckpoint, UnetCond, UnetConfig, UnetNet};
pub use vae::{convert_to_safetensors, SlidingWindow, Vae, VaeConfig};
pub use weights::{RawTensor, StateDict};
