//! The peak memory of scoring one volume for an FID, estimated before the volume is prepared, so
//! that an absurd grid (`eval fid --size 2048,2048,1024`: 16 GiB for the padded grid alone) is
//! refused with its estimate instead of aborting on the allocation.
//!
//! # Where the memory goes (f32; one volume at a time, sets are streamed)
//!
//! - **Volume copies**: the volume as read and its RAS copy (`8` bytes per voxel of the file),
//!   the padded / cropped grid, and either the plane stack of the 2.5D protocol or the scaled
//!   input and its tensor of the 3D one (`12` bytes per grid voxel in all).
//! - **Backbone activations**, per input pixel (2D) or voxel (3D) of one forward pass, times the
//!   batch: the larger of the stem — its input, the stem convolution's patch matrix (2D: `k² ·
//!   c_in` per output pixel; 3D: the direct convolution's padded copy of the input), and its
//!   output, batch-normalised and ReLU'd copies (`3 · stem / stride`) — and the first stage
//!   after the max-pool: a block's input, the 3×3 convolution's patch matrix, its two
//!   `width`-channel intermediates and its output and shortcut (`2 · width · expansion`). Deeper
//!   stages have more channels on 4× (2D) or 8× (3D) fewer positions. The 2.5D batch is
//!   `batch` slices of the largest plane; CT-Net runs its 2D trunk on all slice triplets at once.
//! - **Weights** (parameters × 4 bytes) and the process ([`RUNTIME_BYTES`]).

use text2ct_models::burn::module::Module;
use text2ct_models::resnet2d::{ResNet2d, ResNet2dConfig};
use text2ct_models::resnet3d::ResNet3dConfig;

use crate::fid::{Backbone, FidError, FidResult};

/// The process besides the backbone and the volume (binary, allocator, thread stacks).
pub const RUNTIME_BYTES: u64 = 64 << 20;

const F32: u64 = 4;

fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

fn voxels(d: [usize; 3]) -> u64 {
    prod(&d.map(|x| x as u64))
}

/// Floats per input pixel of one 2D ResNet forward (see the module documentation).
fn resnet2d_per_pixel(c: &ResNet2dConfig) -> f64 {
    let (cin, s, w, e) = (c.in_channels as f64, c.stem_width as f64, c.widths[0] as f64, c.block.expansion() as f64);
    // Stem: 7x7 stride 2 (a quarter of the pixels), then a stride-2 max-pool (a sixteenth).
    let stem = cin + 49.0 * cin / 4.0 + 3.0 * s / 4.0;
    let stage1 = (s + 9.0 * w + 2.0 * w + 2.0 * w * e) / 16.0;
    stem.max(stage1)
}

/// Floats per input voxel of one 3D ResNet forward.
fn resnet3d_per_voxel(c: &ResNet3dConfig) -> f64 {
    let (cin, s, w, e) = (c.in_channels as f64, c.stem_width as f64, c.widths[0] as f64, c.block.expansion() as f64);
    let stride = c.conv1_stride.iter().map(|&x| x.max(1) as f64).product::<f64>();
    let pool = if c.no_max_pool { 1.0 } else { 8.0 };
    let stem = 2.0 * cin + 3.0 * s / stride;
    let stage1 = (s + 4.0 * w + 2.0 * w * e) / (stride * pool);
    stem.max(stage1)
}

/// [`fid_volume_bytes`] for the 2D backbone of the 2.5D protocol.
pub fn resnet2d_volume_bytes(m: &ResNet2d, file_dims: [usize; 3], grid: [usize; 3], batch: usize) -> u64 {
    let [x, y, z] = grid.map(|d| d as u64);
    let largest_plane = x.saturating_mul(y).max(x.saturating_mul(z)).max(y.saturating_mul(z));
    let floats = resnet2d_per_pixel(&m.config) * largest_plane as f64 * batch.max(1) as f64;
    total(m.net.num_params(), file_dims, grid, floats)
}

/// Weights, runtime, volume copies and `activations` floats, in bytes.
fn total(params: usize, file_dims: [usize; 3], grid: [usize; 3], activations: f64) -> u64 {
    let copies = prod(&[8, voxels(file_dims)]).saturating_add(prod(&[12, voxels(grid)]));
    let act = if activations.is_finite() && activations < (u64::MAX / F32) as f64 {
        activations as u64 * F32
    } else {
        u64::MAX
    };
    RUNTIME_BYTES.saturating_add(prod(&[params as u64, F32])).saturating_add(copies).saturating_add(act)
}

/// The estimated peak bytes of scoring one volume of `file_dims` voxels on the grid `grid`
/// (its own dims when no size is given) with `backbone`; `batch` slices per 2D forward pass.
pub fn fid_volume_bytes(backbone: &Backbone, file_dims: [usize; 3], grid: [usize; 3], batch: usize) -> u64 {
    let (params, activations) = match backbone {
        Backbone::ResNet2d(m) => return resnet2d_volume_bytes(m, file_dims, grid, batch),
        Backbone::ResNet3d(m) | Backbone::Astra(m) => {
            // Astra repeats the volume in its 3 input channels: the config says so.
            (m.net.num_params(), resnet3d_per_voxel(&m.config) * voxels(grid) as f64)
        }
        Backbone::CtNet(m) => {
            let c = &m.config;
            let trunk =
                ResNet2dConfig { widths: c.trunk_widths, stem_width: c.trunk_stem_width, ..ResNet2dConfig::resnet18() };
            let pixels = (c.size[0] * c.size[1]) as f64 * c.n_triplets() as f64;
            (m.net.num_params(), resnet2d_per_pixel(&trunk) * pixels)
        }
    };
    total(params, file_dims, grid, activations)
}

/// Refuse scoring a volume on `grid` whose estimate (`bytes`, from [`fid_volume_bytes`]) does
/// not fit in the memory available (`text2ct_io::memory`); `what` names the volume or the size.
pub fn check_fits(bytes: u64, grid: [usize; 3], what: &str) -> FidResult<u64> {
    let [x, y, z] = grid;
    text2ct_io::memory::check_fits(&format!("{what}: scoring a {x} x {y} x {z} grid"), bytes)
        .map_err(FidError::from)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use text2ct_models::burn::tensor::Device;
    use text2ct_models::resnet3d::ResNet3d;

    #[test]
    fn estimates_follow_the_grid_and_saturate() {
        let dev = Device::flex();
        let c = ResNet3dConfig { widths: [8, 8, 12, 16], stem_width: 8, ..ResNet3dConfig::medicalnet(10).unwrap() };
        let b = Backbone::ResNet3d(ResNet3d::new(&c, 1, &dev).unwrap());
        let small = fid_volume_bytes(&b, [64, 64, 32], [64, 64, 32], 1);
        let big = fid_volume_bytes(&b, [64, 64, 32], [128, 128, 64], 1);
        assert!(big > 4 * (small - RUNTIME_BYTES), "{small} {big}");
        // The grid of the issue: 2048 x 2048 x 1024 is 16 GiB per f32 copy, three of them.
        let huge = fid_volume_bytes(&b, [64, 64, 32], [2048, 2048, 1024], 1);
        assert!(huge > 3 * (16 << 30), "{huge}");
        assert_eq!(fid_volume_bytes(&b, [usize::MAX; 3], [usize::MAX; 3], 1), u64::MAX);
    }
}
