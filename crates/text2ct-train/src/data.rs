//! A deterministic, exactly resumable loader over a prepared manifest.
//!
//! Volumes are the int16 HU `.npy` files written by `text2ct prepare`, memory-mapped, and read
//! as models see them: `(clip(hu, -1000, 1000) + 1000) / 2000` in [0, 1]. Batches are
//! `[B, 1, X, Y, Z]`, z fastest (burn's row-major layout).
//!
//! Randomness is a pure function of `(seed, epoch, position)`: the order of epoch `e` is a
//! Fisher–Yates shuffle with a ChaCha8 generator seeded from `(seed, e)`, and the crop origin
//! and flips of the sample at position `p` come from a generator seeded from `(seed, e, p)`.
//! The loader's whole state is therefore `(epoch, position)` ([`LoaderState`]), which a
//! checkpoint stores; a resumed loader yields exactly the batches an uninterrupted one would.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use text2ct_data::manifest::{read_manifest, volume_path, ManifestEntry, MappedVolume};

use crate::error::{Result, TrainError};

/// One prepared volume of a manifest.
#[derive(Clone, Debug)]
pub struct Item {
    pub entry: ManifestEntry,
    pub path: PathBuf,
    pub dims: [usize; 3],
}

/// The volumes of a manifest (headers checked when opened).
#[derive(Clone, Debug)]
pub struct VolumeSet {
    pub manifest: PathBuf,
    pub items: Vec<Item>,
}

impl VolumeSet {
    /// Read a manifest and check every volume's header; `limit` keeps the first N entries.
    pub fn open(manifest: &Path, limit: Option<usize>) -> Result<Self> {
        if !manifest.is_file() {
            return Err(TrainError::Data(format!("manifest {} does not exist", manifest.display())));
        }
        let entries = read_manifest(manifest).map_err(|e| TrainError::Data(format!("{}: {e}", manifest.display())))?;
        let n = limit.unwrap_or(usize::MAX).min(entries.len());
        let mut items = Vec::with_capacity(n);
        for entry in entries.into_iter().take(n) {
            let path = volume_path(manifest, &entry);
            let v = MappedVolume::open(&path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
            items.push(Item { dims: v.dims(), entry, path });
        }
        if items.is_empty() {
            return Err(TrainError::Data(format!("manifest {} lists no volumes", manifest.display())));
        }
        Ok(VolumeSet { manifest: manifest.to_path_buf(), items })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Positives / volumes for each of the 18 labels (a missing entry counts as negative).
    pub fn prevalence(&self) -> Vec<f64> {
        let n = self.len().max(1) as f64;
        (0..text2ct_data::labels::NUM_LABELS)
            .map(|k| self.items.iter().filter(|it| it.entry.labels.get(k).is_some_and(|&v| v != 0)).count() as f64 / n)
            .collect()
    }

    /// Voxels of item `i` in [0, 1], tensor layout (z fastest), with its dims.
    pub fn read_unit(&self, i: usize) -> Result<(Vec<f32>, [usize; 3])> {
        let it = &self.items[i];
        let v = MappedVolume::open(&it.path).map_err(|e| TrainError::Data(format!("{}: {e}", it.path.display())))?;
        let [nx, ny, nz] = v.dims();
        let mut out = vec![0f32; nx * ny * nz];
        for x in 0..nx {
            for y in 0..ny {
                for z in 0..nz {
                    out[(x * ny + y) * nz + z] = hu_to_unit(v.hu(x + nx * (y + ny * z)));
                }
            }
        }
        Ok((out, [nx, ny, nz]))
    }
}

/// `text2ct_io::transform::hu_to_unit` of a stored int16 HU value.
#[inline]
pub fn hu_to_unit(hu: i16) -> f32 {
    text2ct_io::transform::hu_to_unit(f32::from(hu))
}

/// Where a loader is: epoch and position inside that epoch's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: usize,
    pub pos: usize,
}

/// A batch `[B, 1, X, Y, Z]` in [0, 1], z fastest.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub data: Vec<f32>,
    pub dims: [usize; 5],
    /// Manifest ids of the samples.
    pub ids: Vec<String>,
}

/// How samples are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub patch: Option<[usize; 3]>,
    pub flip_prob: [f64; 3],
    pub seed: u64,
}

/// Shuffled epochs over a [`VolumeSet`]; see the module docs for the determinism contract.
pub struct Loader {
    set: VolumeSet,
    opts: LoaderOptions,
    state: LoaderState,
    order: Vec<usize>,
    order_epoch: Option<usize>,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    // SplitMix64-style mixing of the three words into one seed.
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Loader {
    pub fn new(set: VolumeSet, opts: LoaderOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be >= 1".into()));
        }
        match opts.patch {
            Some(p) => {
                if let Some(it) = set.items.iter().find(|it| (0..3).any(|a| it.dims[a] < p[a])) {
                    return Err(TrainError::Data(format!(
                        "{}: volume {:?} is smaller than patch_size {p:?}",
                        it.path.display(),
                        it.dims
                    )));
                }
            }
            None => {
                let d0 = set.items[0].dims;
                if let Some(it) = set.items.iter().find(|it| it.dims != d0) {
                    return Err(TrainError::Data(format!(
                        "volumes differ in size ({:?} vs {d0:?} at {}): set data.patch_size to crop",
                        it.dims,
                        it.path.display()
                    )));
                }
            }
        }
        Ok(Loader { set, opts, state: LoaderState::default(), order: Vec::new(), order_epoch: None })
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Jump to a saved state (exact resume).
    pub fn set_state(&mut self, s: LoaderState) {
        self.state = s;
    }

    pub fn set(&self) -> &VolumeSet {
        &self.set
    }

    /// Sample shape `[X, Y, Z]` of the batches.
    pub fn sample_dims(&self) -> [usize; 3] {
        self.opts.patch.unwrap_or(self.set.items[0].dims)
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.state.epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.opts.seed, self.state.epoch as u64, u64::MAX));
            let mut order: Vec<usize> = (0..self.set.len()).collect();
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
            self.order = order;
            self.order_epoch = Some(self.state.epoch);
        }
    }

    /// The next sample (advancing the state; a new epoch starts when one is used up).
    fn next_sample(&mut self) -> Result<(Vec<f32>, [usize; 3], String)> {
        if self.state.pos >= self.set.len() {
            self.state = LoaderState { epoch: self.state.epoch + 1, pos: 0 };
        }
        self.ensure_order();
        let idx = self.order[self.state.pos];
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.opts.seed, self.state.epoch as u64, self.state.pos as u64));
        self.state.pos += 1;
        let (vol, dims) = self.set.read_unit(idx)?;
        let out_dims = self.opts.patch.unwrap_or(dims);
        let mut origin = [0usize; 3];
        for a in 0..3 {
            origin[a] = if dims[a] > out_dims[a] { rng.random_range(0..=dims[a] - out_dims[a]) } else { 0 };
        }
        let mut flip = [false; 3];
        for a in 0..3 {
            // Always draw, so the stream does not depend on the probabilities' values.
            let u: f64 = rng.random();
            flip[a] = u < self.opts.flip_prob[a];
        }
        let [px, py, pz] = out_dims;
        let mut out = vec![0f32; px * py * pz];
        for x in 0..px {
            let sx = origin[0] + if flip[0] { px - 1 - x } else { x };
            for y in 0..py {
                let sy = origin[1] + if flip[1] { py - 1 - y } else { y };
                let row = (sx * dims[1] + sy) * dims[2];
                let dst = (x * py + y) * pz;
                for z in 0..pz {
                    let sz = origin[2] + if flip[2] { pz - 1 - z } else { z };
                    out[dst + z] = vol[row + sz];
                }
            }
        }
        Ok((out, out_dims, self.set.items[idx].entry.id.clone()))
    }

    /// The next batch of `batch_size` samples (batches may straddle epochs).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let b = self.opts.batch_size;
        let [x, y, z] = self.sample_dims();
        let mut data = Vec::with_capacity(b * x * y * z);
        let mut ids = Vec::with_capacity(b);
        for _ in 0..b {
            let (v, _, id) = self.next_sample()?;
            data.extend_from_slice(&v);
            ids.push(id);
        }
        Ok(Batch { data, dims: [b, 1, x, y, z], ids })
    }
}

/// A seed for stream `stream` at `step` (latent noise etc.), independent of the data streams.
pub fn step_seed(seed: u64, stream: u64, step: u64) -> u64 {
    mix(seed ^ 0xA5A5_5A5A_DEAD_BEEF, stream, step)
}
