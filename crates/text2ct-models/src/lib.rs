//! Neural networks of text2ct (burn): MAISI VAE, diffusion U-Net, 3D CLIP.
//!
//! - [`vae`]: MONAI's `AutoencoderKlMaisi` (encode / decode / sliding-window decode), loading
//!   MONAI `.pt` or `.safetensors` weights strictly.
//! - [`blocks`]: shared building blocks (ResBlock, down/upsample) and parameter sources.
//! - [`interp`]: 3D interpolation burn lacks (trilinear x2, nearest repeat).
//! - [`sliding`]: MONAI-compatible sliding-window inference.
//! - [`weights`]: reading PyTorch / safetensors state dicts.
//! - [`resnet2d`], [`resnet3d`]: evaluation backbones: torchvision / RadImageNet 2D ResNets and
//!   MedicalNet / MONAI 3D ResNets (feature extractors for the FID), strict PyTorch-key loading.

pub mod blocks;
pub mod error;
pub mod interp;
pub mod resnet2d;
pub mod resnet3d;
pub mod sliding;
pub mod vae;
pub mod weights;

/// The burn version the models are built with (so dependents need not name it).
pub use burn;
pub use error::{ModelError, Result};
/// `.npy` arrays come from the I/O crate (one implementation for the whole project).
pub use text2ct_io::npy::NpyArray;
pub use vae::{convert_to_safetensors, SlidingWindow, Vae, VaeConfig};
pub use weights::{RawTensor, StateDict};
