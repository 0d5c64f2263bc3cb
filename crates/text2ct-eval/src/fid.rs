//! FID between two sets of CT volumes: MAISI's **2.5D** protocol (2D features of every slice in
//! three planes) and a **3D** protocol (one feature vector per volume), with the backbones of
//! `text2ct-models` (torchvision / RadImageNet 2D ResNets, MedicalNet 3D ResNets, CT-Net).
//! The protocol is written down in `docs/evaluation/fid.md`.
//!
//! A volume set is a folder of NIfTI files (`*.nii`, `*.nii.gz`, searched recursively, sorted by
//! path), a prepared data
//! set (a folder with `manifest.jsonl`, or the `manifest.jsonl` itself), or a single NIfTI file.
//! Sets may differ in size (FID allows it) but each needs at least 2 volumes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_models::burn::tensor::{Device, Tensor, TensorData};
use text2ct_models::ctnet::{CtNet, CtNetConfig, ReducingConv};
use text2ct_models::resnet2d::{ResNet2d, ResNet2dConfig};
use text2ct_models::resnet3d::{ResNet3d, ResNet3dConfig};
use text2ct_models::StateDict;

use crate::frechet::fid_from_features;

/// Everything that can go wrong computing an FID.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// A bad set, argument, or volume.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] text2ct_io::IoError),
    #[error(transparent)]
    Model(#[from] text2ct_models::ModelError),
    #[error(transparent)]
    Metric(#[from] crate::EvalError),
}

pub type FidResult<T> = std::result::Result<T, FidError>;

fn input<T>(msg: impl Into<String>) -> FidResult<T> {
    Err(FidError::Input(msg.into()))
}

// ---------------------------------------------------------------------------------------------
// Volume sets
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Item {
    Nifti(PathBuf),
    Prepared { npy: PathBuf, affine: [[f64; 4]; 4] },
}

/// A set of volumes, loaded one at a time.
#[derive(Clone, Debug)]
pub struct VolumeSet {
    pub path: PathBuf,
    /// `nifti-folder`, `nifti-file` or `prepared-manifest`.
    pub kind: String,
    ids: Vec<String>,
    items: Vec<Item>,
}

fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// NIfTI files under `dir`, recursively (at most 8 levels; hidden entries skipped).
fn collect_nifti(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> FidResult<()> {
    if depth > 8 {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).map_err(|e| text2ct_io::IoError::os(dir, e))? {
        let p = e.map_err(|e| text2ct_io::IoError::os(dir, e))?.path();
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            collect_nifti(&p, out, depth + 1)?;
        } else if is_nifti(&p) {
            out.push(p);
        }
    }
    Ok(())
}

impl VolumeSet {
    /// Open a set (see the module documentation). Errors if it holds no volume.
    pub fn open(path: &Path) -> FidResult<Self> {
        if !path.exists() {
            return input(format!("{}: no such file or folder", path.display()));
        }
        let manifest = if path.is_dir() { path.join("manifest.jsonl") } else { path.to_path_buf() };
        let (kind, ids, items) = if manifest.is_file() && manifest.extension().is_some_and(|e| e == "jsonl") {
            let entries = text2ct_data::manifest::read_manifest(&manifest)?;
            let items = entries
                .iter()
                .map(|e| Item::Prepared { npy: text2ct_data::manifest::volume_path(&manifest, e), affine: e.affine })
                .collect();
            ("prepared-manifest", entries.into_iter().map(|e| e.id).collect(), items)
        } else if path.is_dir() {
            let mut files = Vec::new();
            collect_nifti(path, &mut files, 0)?;
            files.sort();
            let ids = files.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
            ("nifti-folder", ids, files.into_iter().map(Item::Nifti).collect())
        } else if is_nifti(path) {
            ("nifti-file", vec![path.display().to_string()], vec![Item::Nifti(path.to_path_buf())])
        } else {
            return input(format!(
                "{}: not a volume set (a folder of .nii/.nii.gz files, a prepared folder with manifest.jsonl, \
                 or a NIfTI file)",
                path.display()
            ));
        };
        if items.is_empty() {
            return input(format!("{}: the set holds no volumes (.nii / .nii.gz or manifest entries)", path.display()));
        }
        Ok(VolumeSet { path: path.to_path_buf(), kind: kind.to_string(), ids, items })
    }

    /// A set of exactly these NIfTI files (in this order), named `path` in reports; what an
    /// experiment that wrote the files uses so that stray files in the folder never count.
    pub fn from_nifti_files(path: &Path, files: &[PathBuf]) -> FidResult<Self> {
        if files.is_empty() {
            return input(format!("{}: the set holds no volumes", path.display()));
        }
        if let Some(f) = files.iter().find(|f| !f.is_file()) {
            return input(format!("{}: no such file", f.display()));
        }
        let ids = files.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        Ok(VolumeSet {
            path: path.to_path_buf(),
            kind: "nifti-files".into(),
            ids,
            items: files.iter().cloned().map(Item::Nifti).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The file volume `i` is read from (the NIfTI file, or the prepared `.npy`).
    pub fn source(&self, i: usize) -> &Path {
        match &self.items[i] {
            Item::Nifti(p) => p,
            Item::Prepared { npy, .. } => npy,
        }
    }

    /// Volume `i` in HU, with its geometry. A volume with NaN or infinite voxels is refused,
    /// naming its file (a metric over such a volume would be silently wrong).
    pub fn load(&self, i: usize) -> FidResult<text2ct_io::Volume> {
        let vol = match &self.items[i] {
            Item::Nifti(p) => text2ct_io::nifti_io::read_nifti(p, &text2ct_io::Limits::default())?.0,
            Item::Prepared { npy, affine } => {
                text2ct_data::manifest::MappedVolume::open(npy)?.to_volume(affine).map_err(|e| e.at(npy))?
            }
        };
        vol.check_finite().map_err(|e| e.at(self.source(i)))?;
        Ok(vol)
    }
}

// ---------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------

/// MONAI's `SpatialPad` (symmetric, `floor(diff / 2)` before) then `CenterSpatialCrop` (start
/// `old // 2 - new // 2`), padding with `pad`. Works on x-fastest data.
pub fn pad_crop_monai(data: &[f32], dims: [usize; 3], size: [usize; 3], pad: f32) -> Vec<f32> {
    // For each axis: new index n maps to old index n + off (off may be negative).
    let off: [i64; 3] = [0, 1, 2].map(|a| {
        let (o, n) = (dims[a] as i64, size[a] as i64);
        if o < n {
            -((n - o) / 2)
        } else {
            o / 2 - n / 2
        }
    });
    let mut out = vec![pad; size[0] * size[1] * size[2]];
    for z in 0..size[2] {
        let oz = z as i64 + off[2];
        if oz < 0 || oz >= dims[2] as i64 {
            continue;
        }
        for y in 0..size[1] {
            let oy = y as i64 + off[1];
            if oy < 0 || oy >= dims[1] as i64 {
                continue;
            }
            let row = size[0] * (y + size[1] * z);
            let orow = dims[0] * (oy as usize + dims[1] * oz as usize);
            for x in 0..size[0] {
                let ox = x as i64 + off[0];
                if ox >= 0 && ox < dims[0] as i64 {
                    out[row + x] = data[orow + ox as usize];
                }
            }
        }
    }
    out
}

/// Reorient to RAS, pad (−1000) / centre-crop to `size` if given, clip HU to [−1000, 1000].
/// Returns x-fastest data and dims.
pub fn prepare_hu(vol: &text2ct_io::Volume, size: Option<[usize; 3]>) -> FidResult<(Vec<f32>, [usize; 3])> {
    let ras = text2ct_io::transform::reorient(vol, "RAS")?;
    let dims = ras.dims();
    let (mut data, dims) = match size {
        Some(s) if s != dims => (pad_crop_monai(ras.data(), dims, s, -1000.0), s),
        _ => (ras.into_data(), dims),
    };
    for v in &mut data {
        *v = if v.is_nan() { -1000.0 } else { v.clamp(-1000.0, 1000.0) };
    }
    Ok((data, dims))
}

/// A slicing plane of the 2.5D protocol (RAS voxel axes X, Y, Z).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// XY images, one per Z (MAISI "XY"): rows X, columns Y.
    Axial,
    /// XZ images, one per Y (MAISI "ZX"): rows X, columns Z.
    Coronal,
    /// YZ images, one per X (MAISI "YZ"): rows Y, columns Z.
    Sagittal,
}

impl Plane {
    pub fn parse(s: &str) -> FidResult<Plane> {
        match s.trim().to_ascii_lowercase().as_str() {
            "axial" | "xy" => Ok(Plane::Axial),
            "coronal" | "xz" | "zx" => Ok(Plane::Coronal),
            "sagittal" | "yz" => Ok(Plane::Sagittal),
            o => input(format!("unknown plane {o:?} (axial, coronal, sagittal)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Plane::Axial => "axial",
            Plane::Coronal => "coronal",
            Plane::Sagittal => "sagittal",
        }
    }
    /// (slice axis, row axis, column axis).
    fn axes(self) -> (usize, usize, usize) {
        match self {
            Plane::Axial => (2, 0, 1),
            Plane::Coronal => (1, 0, 2),
            Plane::Sagittal => (0, 1, 2),
        }
    }
}

/// Python's `int((1 - r) / 2 * n)` .. `int((1 + r) / 2 * n)` (MAISI's centre slices).
pub fn center_range(n: usize, fraction: f64) -> (usize, usize) {
    let start = ((1.0 - fraction) / 2.0 * n as f64) as usize;
    let end = (((1.0 + fraction) / 2.0 * n as f64) as usize).min(n);
    (start, end.max(start))
}

/// The 2D images of one plane: `[n, rows, cols]` values, min–max normalised over the whole
/// stack to [0, 1] (`(v - min) / (max - min + 1e-10)`), as `(values, n, rows, cols)`.
pub fn plane_stack(data: &[f32], dims: [usize; 3], plane: Plane, fraction: f64) -> (Vec<f32>, usize, usize, usize) {
    let (sa, ra, ca) = plane.axes();
    let (s0, s1) = center_range(dims[sa], fraction);
    let (nr, nc) = (dims[ra], dims[ca]);
    let stride = [1, dims[0], dims[0] * dims[1]];
    let mut out = Vec::with_capacity((s1 - s0) * nr * nc);
    for s in s0..s1 {
        for r in 0..nr {
            for c in 0..nc {
                out.push(data[s * stride[sa] + r * stride[ra] + c * stride[ca]]);
            }
        }
    }
    let (lo, hi) = out.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let den = (hi as f64 - lo as f64) + 1e-10;
    for v in &mut out {
        *v = ((*v as f64 - lo as f64) / den) as f32;
    }
    (out, s1 - s0, nr, nc)
}

// ---------------------------------------------------------------------------------------------
// Backbones
// ---------------------------------------------------------------------------------------------

/// The backbone names the FID accepts.
pub const BACKBONE_NAMES: &[&str] = &[
    "resnet50-2d",
    "resnet18-2d",
    "medicalnet-resnet10",
    "medicalnet-resnet18",
    "medicalnet-resnet34",
    "medicalnet-resnet50",
    "astra-resnet152",
    "ctnet",
];

/// What a report says about a backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneInfo {
    pub name: String,
    /// `2d` or `3d`.
    pub kind: String,
    /// Detected key layout (`torchvision`, `radimagenet`, `medicalnet`, `ct-net-models`).
    pub layout: String,
    pub feature_dim: usize,
    pub weights: String,
    pub weights_sha256: String,
    /// The architecture as built (the model's config, serialised).
    pub config: serde_json::Value,
}

/// A loaded backbone.
#[derive(Debug)]
pub enum Backbone {
    ResNet2d(ResNet2d),
    ResNet3d(ResNet3d),
    /// Astra / Merlin's CT-pretrained I3ResNet-152 (a 3D ResNet with its own input convention).
    Astra(ResNet3d),
    CtNet(CtNet),
}

/// A backbone and what the report says about it.
#[derive(Debug)]
pub struct LoadedBackbone {
    pub info: BackboneInfo,
    pub model: Backbone,
}

impl LoadedBackbone {
    pub fn is_2d(&self) -> bool {
        matches!(self.model, Backbone::ResNet2d(_))
    }
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> FidResult<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| text2ct_io::IoError::os(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| text2ct_io::IoError::os(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// CT-Net's architecture read off a state dict (`n_slices = 3 x` the first reducing conv's input
/// channels, trunk widths, reducing kernels, FC sizes); strides follow [`CtNetConfig::fitted`]'s
/// rule (`min(paper stride, kernel)`); the in-plane size must be given.
pub fn infer_ctnet_config(sd: &StateDict, size: [usize; 2], origin: &Path) -> FidResult<CtNetConfig> {
    let shape = |k: &str| {
        sd.tensors
            .get(k)
            .map(|t| t.shape.clone())
            .ok_or_else(|| FidError::Input(format!("{}: not a CT-Net checkpoint (no `{k}`)", origin.display())))
    };
    let mut cfg = CtNetConfig::paper();
    let r0 = shape("reducingconvs.0.weight")?;
    if r0.len() != 5 {
        return input(format!("{}: reducingconvs.0.weight is not a Conv3d weight", origin.display()));
    }
    cfg.n_slices = 3 * r0[1];
    cfg.size = size;
    cfg.trunk_stem_width = shape("features.0.weight")?[0];
    for (i, w) in cfg.trunk_widths.iter_mut().enumerate() {
        *w = shape(&format!("features.{}.0.conv1.weight", 4 + i))?[0];
    }
    let paper: Vec<ReducingConv> = CtNetConfig::paper().reducing;
    cfg.reducing.clear();
    for i in 0.. {
        let Some(t) = sd.tensors.get(&format!("reducingconvs.{}.weight", 2 * i)) else { break };
        let kernel = [t.shape[2], t.shape[3], t.shape[4]];
        let ps = paper.get(i).map(|r| r.stride).unwrap_or([1; 3]);
        let stride = [0, 1, 2].map(|a| ps[a].min(kernel[a]));
        cfg.reducing.push(ReducingConv { out: t.shape[0], kernel, stride });
    }
    cfg.fc = [shape("classifier.0.weight")?[0], shape("classifier.3.weight")?[0]];
    cfg.n_outputs = shape("classifier.6.weight")?[0];
    Ok(cfg)
}

/// Load a backbone by name. `ctnet_size` (`[H, W]`) is needed for `ctnet` without a config;
/// `config` (JSON of the model's config type) overrides the preset / inferred architecture.
pub fn load_backbone(
    name: &str,
    weights: &Path,
    config: Option<&Path>,
    ctnet_size: Option<[usize; 2]>,
    dev: &Device,
) -> FidResult<LoadedBackbone> {
    if !weights.is_file() {
        return input(format!("backbone weights {}: no such file", weights.display()));
    }
    let cfg_json: Option<serde_json::Value> = match config {
        Some(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| text2ct_io::IoError::os(p, e))?;
            Some(serde_json::from_str(&s).map_err(|e| FidError::Input(format!("{}: bad JSON: {e}", p.display())))?)
        }
        None => None,
    };
    let parse = |v: &serde_json::Value| -> FidResult<_> { Ok(v.clone()) };
    let sha = sha256_file(weights)?;
    let (model, layout, kind, cfg_value, dim) = match name {
        "resnet50-2d" | "resnet18-2d" => {
            let base = if name == "resnet50-2d" { ResNet2dConfig::resnet50() } else { ResNet2dConfig::resnet18() };
            let m = match &cfg_json {
                Some(v) => {
                    let c: ResNet2dConfig = serde_json::from_value(parse(v)?)
                        .map_err(|e| FidError::Input(format!("backbone config: {e}")))?;
                    ResNet2d::load(&c, weights, dev)?
                }
                None => ResNet2d::load_auto(&base, weights, dev)?,
            };
            let layout = if m.config.conv_bias { "radimagenet" } else { "torchvision" };
            let dim = m.feature_dim();
            let v = serde_json::to_value(&m.config).unwrap_or_default();
            (Backbone::ResNet2d(m), layout, "2d", v, dim)
        }
        n if n.starts_with("medicalnet-resnet") => {
            let depth: usize = n["medicalnet-resnet".len()..]
                .parse()
                .map_err(|_| FidError::Input(format!("unknown backbone {n:?}")))?;
            if ![10, 18, 34, 50].contains(&depth) {
                return input(format!("unknown backbone {n:?} (medicalnet-resnet10/18/34/50)"));
            }
            let (m, v, dim) = load_resnet3d(cfg_json.as_ref(), ResNet3dConfig::medicalnet(depth)?, weights, dev)?;
            (Backbone::ResNet3d(m), "medicalnet", "3d", v, dim)
        }
        "astra-resnet152" => {
            let (m, v, dim) = load_resnet3d(cfg_json.as_ref(), ResNet3dConfig::astra_resnet152(), weights, dev)?;
            if m.config.in_channels != 3 {
                return input("astra-resnet152 takes 3 input channels (the volume repeated)");
            }
            (Backbone::Astra(m), "astra-merlin", "3d", v, dim)
        }
        "ctnet" => {
            let c: CtNetConfig = match &cfg_json {
                Some(v) => {
                    serde_json::from_value(parse(v)?).map_err(|e| FidError::Input(format!("backbone config: {e}")))?
                }
                None => {
                    let Some(size) = ctnet_size else {
                        return input("ctnet needs the in-plane size: give --size X,Y,Z or a --backbone-config");
                    };
                    let sd =
                        StateDict::read(weights)?.select_by_anchor(text2ct_models::ctnet::CTNET_ANCHOR_KEY, weights)?;
                    infer_ctnet_config(&sd, size, weights)?
                }
            };
            let m = CtNet::load(&c, weights, dev)?;
            let dim = m.feature_dim();
            let v = serde_json::to_value(&m.config).unwrap_or_default();
            (Backbone::CtNet(m), "ct-net-models", "3d", v, dim)
        }
        other => return input(format!("unknown backbone {other:?}; known: {}", BACKBONE_NAMES.join(", "))),
    };
    Ok(LoadedBackbone {
        info: BackboneInfo {
            name: name.to_string(),
            kind: kind.to_string(),
            layout: layout.to_string(),
            feature_dim: dim,
            weights: weights.display().to_string(),
            weights_sha256: sha,
            config: cfg_value,
        },
        model,
    })
}

// ---------------------------------------------------------------------------------------------
// Protocols and features
// ---------------------------------------------------------------------------------------------

/// MAISI's 2.5D protocol parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Protocol25d {
    pub planes: Vec<Plane>,
    /// Pad (−1000) / centre-crop target `(X, Y, Z)`; `None` keeps each volume's size.
    pub size: Option<[usize; 3]>,
    /// Fraction of central slices per plane (1.0 = all; MAISI's example uses 0.4).
    pub center_fraction: f64,
    pub hu_clip: [f32; 2],
    pub pad_value: f32,
    pub orientation: String,
    /// Channel order fed to the backbone (grey repeated).
    pub channel_order: String,
    /// Subtracted per channel after the stack min–max normalisation (B, G, R order).
    pub channel_means: [f32; 3],
    /// Slices per forward pass (does not change results).
    pub batch: usize,
}

impl Default for Protocol25d {
    fn default() -> Self {
        Protocol25d {
            planes: vec![Plane::Axial, Plane::Coronal, Plane::Sagittal],
            size: None,
            center_fraction: 1.0,
            hu_clip: [-1000.0, 1000.0],
            pad_value: -1000.0,
            orientation: "RAS".into(),
            channel_order: "BGR".into(),
            channel_means: [0.406, 0.456, 0.485],
            batch: 8,
        }
    }
}

/// The 3D protocol parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Protocol3d {
    pub size: Option<[usize; 3]>,
    pub hu_clip: [f32; 2],
    pub pad_value: f32,
    pub orientation: String,
    /// `hu / 1000` (MedicalNet / HA-GAN, [-1, 1]) or CT-Net's own window and mean.
    pub scaling: String,
    /// Tensor axes fed to the network.
    pub axes: String,
}

fn to_vec2(t: Tensor<2>) -> FidResult<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| FidError::Input(format!("reading features: {e:?}")))
}

fn check_volume(dims: [usize; 3], id: &str) -> FidResult<()> {
    if dims.iter().any(|&d| d < 2) {
        return input(format!("volume {id}: shape {dims:?} is not a 3D volume (every axis needs >= 2 voxels)"));
    }
    Ok(())
}

/// 2.5D features of one set, per plane (`features[p]` is a list of per-slice vectors).
pub fn features_25d(
    set: &VolumeSet,
    net: &ResNet2d,
    proto: &Protocol25d,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> FidResult<Vec<Vec<Vec<f32>>>> {
    let dev = net.net.conv1.weight.val().device();
    let mut out = vec![Vec::new(); proto.planes.len()];
    for i in 0..set.len() {
        let vol = set.load(i)?;
        check_volume(vol.dims(), set.id(i))?;
        let grid = proto.size.unwrap_or(vol.dims());
        let what = format!("volume {}", set.source(i).display());
        let bytes = crate::memory::resnet2d_volume_bytes(net, vol.dims(), grid, proto.batch);
        crate::memory::check_fits(bytes, grid, &what)?;
        let (data, dims) = prepare_hu(&vol, proto.size)?;
        for (pi, &plane) in proto.planes.iter().enumerate() {
            let (stack, n, rows, cols) = plane_stack(&data, dims, plane, proto.center_fraction);
            let img = rows * cols;
            let mut s = 0;
            while s < n {
                let b = proto.batch.max(1).min(n - s);
                let mut x = Vec::with_capacity(b * 3 * img);
                for k in 0..b {
                    let sl = &stack[(s + k) * img..(s + k + 1) * img];
                    for m in proto.channel_means {
                        x.extend(sl.iter().map(|v| v - m));
                    }
                }
                let t = Tensor::<4>::from_data(TensorData::new(x, [b, 3, rows, cols]), &dev);
                let f = to_vec2(net.features(t)?)?;
                let d = net.feature_dim();
                for k in 0..b {
                    let v = f[k * d..(k + 1) * d].to_vec();
                    if v.iter().any(|x| !x.is_finite()) {
                        return input(format!("volume {}: non-finite {} features", set.id(i), plane.name()));
                    }
                    out[pi].push(v);
                }
                s += b;
            }
        }
        progress(set.id(i), i + 1, set.len());
    }
    Ok(out)
}

/// 3D features of one set (one vector per volume).
pub fn features_3d(
    set: &VolumeSet,
    model: &Backbone,
    size: Option<[usize; 3]>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> FidResult<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(set.len());
    for i in 0..set.len() {
        let vol = set.load(i)?;
        check_volume(vol.dims(), set.id(i))?;
        let grid = match model {
            Backbone::CtNet(m) => size.unwrap_or([m.config.size[1], m.config.size[0], m.config.n_slices]),
            _ => size.unwrap_or(vol.dims()),
        };
        let bytes = crate::memory::fid_volume_bytes(model, vol.dims(), grid, 1);
        crate::memory::check_fits(bytes, grid, &format!("volume {}", set.source(i).display()))?;
        let f = match model {
            // MedicalNet reads nibabel's (X, Y, Z) as (D, H, W).
            Backbone::ResNet3d(m) => to_vec2(m.features(volume_xyz(m, &vol, size, |h| h / 1000.0)?)?)?,
            // Astra's chest window: HU -1000..200 -> 0..1, clipped (its ScaleIntensityRange).
            Backbone::Astra(m) => {
                let t = volume_xyz(m, &vol, size, |h| ((h + 1000.0) / 1200.0).clamp(0.0, 1.0))?;
                to_vec2(m.features(text2ct_models::resnet3d::astra_input(t))?)?
            }
            Backbone::CtNet(m) => {
                let c = &m.config;
                let dev = m.net.fc1.weight.val().device();
                let want = [c.size[1], c.size[0], c.n_slices];
                // The sets' common grid (`size`), then CT-Net's own input: a grid the input holds
                // is centre-padded with -1000 HU, as for classification (a 64 x 64 x 32 grid feeds
                // 33 slices); one it would have to crop is refused.
                let (data, dims) = prepare_hu(&vol, Some(size.unwrap_or(want)))?;
                if (0..3).any(|a| dims[a] > want[a]) {
                    return input(format!(
                        "CT-Net's input {want:?} (X, Y, Z) is smaller than the grid {dims:?}: give a size it holds"
                    ));
                }
                let v = crate::factual::ctnet_input(c, &data, dims)
                    .map_err(|e| FidError::Input(format!("volume {}: {e}", set.id(i))))?;
                let t = Tensor::<5>::from_data(TensorData::new(v, [1, c.n_triplets(), 3, c.size[0], c.size[1]]), &dev);
                to_vec2(m.features(t)?)?
            }
            Backbone::ResNet2d(_) => return input("a 2D backbone cannot make 3D features (use --mode 2.5d)"),
        };
        if f.iter().any(|x| !x.is_finite()) {
            return input(format!("volume {}: non-finite 3D features", set.id(i)));
        }
        out.push(f);
        progress(set.id(i), i + 1, set.len());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// FID of one plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaneFid {
    pub plane: Plane,
    pub fid: f64,
    pub n_real: usize,
    pub n_fake: usize,
}

/// One FID computation (a mode with its backbone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidRun {
    /// `2.5d` or `3d`.
    pub mode: String,
    pub backbone: BackboneInfo,
    pub protocol: serde_json::Value,
    /// 2.5D: per plane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planes: Vec<PlaneFid>,
    /// 2.5D: the mean over planes; 3D: the FID.
    pub fid: f64,
    pub n_real: usize,
    pub n_fake: usize,
}

/// A set as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetInfo {
    pub path: String,
    pub kind: String,
    pub n_volumes: usize,
}

impl SetInfo {
    pub fn of(s: &VolumeSet) -> Self {
        SetInfo { path: s.path.display().to_string(), kind: s.kind.clone(), n_volumes: s.len() }
    }
}

/// The whole report (`fid.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidReport {
    pub format: String,
    pub real: SetInfo,
    pub fake: SetInfo,
    pub runs: Vec<FidRun>,
    pub frechet: String,
}

impl FidReport {
    pub const FORMAT: &'static str = "text2ct-fid-v1";

    pub fn new(real: &VolumeSet, fake: &VolumeSet) -> Self {
        FidReport {
            format: Self::FORMAT.into(),
            real: SetInfo::of(real),
            fake: SetInfo::of(fake),
            runs: Vec::new(),
            frechet: "float64 mean and unbiased covariance; Tr sqrt(S1 S2) via pivoted Cholesky + symmetric \
                      eigenvalues (text2ct-eval frechet)"
                .into(),
        }
    }

    /// The report as Markdown (`fid.md`).
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("# FID report\n\n");
        s.push_str(&format!(
            "- real: `{}` ({}, {} volumes)\n- fake: `{}` ({}, {} volumes)\n- Fréchet distance: {}\n\n",
            self.real.path,
            self.real.kind,
            self.real.n_volumes,
            self.fake.path,
            self.fake.kind,
            self.fake.n_volumes,
            self.frechet
        ));
        for r in &self.runs {
            s.push_str(&format!("## {} FID: {:.6}\n\n", r.mode, r.fid));
            s.push_str(&format!(
                "- backbone: `{}` ({} layout, {} features)\n- weights: `{}`\n- weights SHA-256: `{}`\n",
                r.backbone.name,
                r.backbone.layout,
                r.backbone.feature_dim,
                r.backbone.weights,
                r.backbone.weights_sha256
            ));
            s.push_str(&format!("- feature vectors: {} real, {} fake\n", r.n_real, r.n_fake));
            s.push_str(&format!("- protocol: `{}`\n\n", r.protocol));
            if !r.planes.is_empty() {
                s.push_str("| plane | FID | real slices | fake slices |\n|---|---|---|---|\n");
                for p in &r.planes {
                    s.push_str(&format!("| {} | {:.6} | {} | {} |\n", p.plane.name(), p.fid, p.n_real, p.n_fake));
                }
                s.push_str(&format!("| **average** | **{:.6}** | | |\n\n", r.fid));
            }
        }
        s
    }
}

fn check_sets(real: &VolumeSet, fake: &VolumeSet) -> FidResult<()> {
    for (what, s) in [("real", real), ("fake", fake)] {
        if s.len() < 2 {
            return input(format!(
                "the {what} set {} has {} volume(s); an FID needs at least 2 per set",
                s.path.display(),
                s.len()
            ));
        }
    }
    Ok(())
}

/// MAISI's 2.5D FID between two sets.
pub fn fid_25d(
    real: &VolumeSet,
    fake: &VolumeSet,
    backbone: &LoadedBackbone,
    proto: &Protocol25d,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> FidResult<FidRun> {
    check_sets(real, fake)?;
    let Backbone::ResNet2d(net) = &backbone.model else {
        return input(format!(
            "the 2.5D FID needs a 2D backbone (resnet50-2d, resnet18-2d), not {}",
            backbone.info.name
        ));
    };
    if proto.planes.is_empty() {
        return input("no planes selected");
    }
    if !(proto.center_fraction > 0.0 && proto.center_fraction <= 1.0) {
        return input(format!("center fraction must be in (0, 1], got {}", proto.center_fraction));
    }
    let fr = features_25d(real, net, proto, progress)?;
    let ff = features_25d(fake, net, proto, progress)?;
    let mut planes = Vec::new();
    for (pi, &plane) in proto.planes.iter().enumerate() {
        let fid = fid_from_features(&fr[pi], &ff[pi]).map_err(|e| {
            FidError::Input(format!(
                "{} plane: {e} ({} real, {} fake slices)",
                plane.name(),
                fr[pi].len(),
                ff[pi].len()
            ))
        })?;
        planes.push(PlaneFid { plane, fid, n_real: fr[pi].len(), n_fake: ff[pi].len() });
    }
    let fid = planes.iter().map(|p| p.fid).sum::<f64>() / planes.len() as f64;
    Ok(FidRun {
        mode: "2.5d".into(),
        backbone: backbone.info.clone(),
        protocol: serde_json::to_value(proto).unwrap_or_default(),
        n_real: fr[0].len(),
        n_fake: ff[0].len(),
        planes,
        fid,
    })
}

/// A 3D ResNet from `--backbone-config` JSON when given, else from `preset`, with its serialised
/// config and feature size.
fn load_resnet3d(
    cfg_json: Option<&serde_json::Value>,
    preset: ResNet3dConfig,
    weights: &Path,
    dev: &Device,
) -> FidResult<(ResNet3d, serde_json::Value, usize)> {
    let c: ResNet3dConfig = match cfg_json {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| FidError::Input(format!("backbone config: {e}")))?,
        None => preset,
    };
    let m = ResNet3d::load(&c, weights, dev)?;
    let dim = m.feature_dim();
    let v = serde_json::to_value(&m.config).unwrap_or_default();
    Ok((m, v, dim))
}

/// A volume on the common grid as a `[1, 1, X, Y, Z]` tensor on `m`'s device (nibabel's axis
/// order), each HU value mapped by `scale`.
fn volume_xyz(
    m: &ResNet3d,
    vol: &text2ct_io::Volume,
    size: Option<[usize; 3]>,
    scale: impl Fn(f32) -> f32,
) -> FidResult<Tensor<5>> {
    let dev = m.net.conv1.weight.val().device();
    let (data, [x, y, z]) = prepare_hu(vol, size)?;
    let v: Vec<f32> = data.iter().map(|&h| scale(h)).collect();
    // x-fastest data is row-major [Z, Y, X].
    Ok(Tensor::<5>::from_data(TensorData::new(v, [1, 1, z, y, x]), &dev).permute([0, 1, 4, 3, 2]))
}

/// The 3D FID between two sets (whole volumes through a 3D backbone).
pub fn fid_3d(
    real: &VolumeSet,
    fake: &VolumeSet,
    backbone: &LoadedBackbone,
    size: Option<[usize; 3]>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> FidResult<FidRun> {
    check_sets(real, fake)?;
    let proto = match &backbone.model {
        Backbone::ResNet3d(_) => Protocol3d {
            size,
            hu_clip: [-1000.0, 1000.0],
            pad_value: -1000.0,
            orientation: "RAS".into(),
            scaling: "hu / 1000 (clipped to [-1, 1])".into(),
            axes: "[1, 1, X, Y, Z] (nibabel array order, as MedicalNet reads volumes)".into(),
        },
        Backbone::Astra(_) => Protocol3d {
            size,
            hu_clip: [-1000.0, 200.0],
            pad_value: -1000.0,
            orientation: "RAS".into(),
            scaling: "(clip(hu, -1000, 200) + 1000) / 1200 (Astra's chest window)".into(),
            axes: "[1, 3, Z, X, Y] (the volume repeated in 3 channels, as I3ResNet.forward)".into(),
        },
        Backbone::CtNet(m) => Protocol3d {
            size: Some(size.unwrap_or([m.config.size[1], m.config.size[0], m.config.n_slices])),
            hu_clip: m.config.hu_window,
            pad_value: -1000.0,
            orientation: "RAS".into(),
            scaling: format!(
                "(clip(hu, {}, {}) - lo) / (hi - lo) - {}",
                m.config.hu_window[0], m.config.hu_window[1], m.config.mean
            ),
            axes: "[1, Z/3, 3, Y, X] (axial slice triplets)".into(),
        },
        Backbone::ResNet2d(_) => {
            return input(format!(
                "the 3D FID needs a 3D backbone (medicalnet-resnet*, astra-resnet152, ctnet), not {}",
                backbone.info.name
            ))
        }
    };
    let fr = features_3d(real, &backbone.model, size, progress)?;
    let ff = features_3d(fake, &backbone.model, size, progress)?;
    let fid = fid_from_features(&fr, &ff)?;
    Ok(FidRun {
        mode: "3d".into(),
        backbone: backbone.info.clone(),
        protocol: serde_json::to_value(&proto).unwrap_or_default(),
        planes: Vec::new(),
        fid,
        n_real: fr.len(),
        n_fake: ff.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_with_non_finite_voxels_are_refused_by_name() {
        use text2ct_io::nifti_io::{write_nifti, DType, WriteOptions};
        let d = std::env::temp_dir().join(format!("text2ct-fid-nan-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = text2ct_io::Affine::from_spacing_origin([1.0; 3], [0.0; 3]).unwrap();
        let vol = text2ct_io::Volume::from_fn([4, 4, 4], a, |x, _, _| x as f32 * 10.0).unwrap();
        let opts = WriteOptions { dtype: DType::F32, ..WriteOptions::ct_hu() };
        for (name, bad) in [("nan.nii", f32::NAN), ("inf.nii", f32::INFINITY)] {
            let p = d.join(name);
            write_nifti(&p, &vol, &opts).unwrap();
            assert!(VolumeSet::open(&p).unwrap().load(0).is_ok());
            // Voxel (1, 0, 0) of the float32 data (it starts at vox_offset 352).
            let mut b = std::fs::read(&p).unwrap();
            b[356..360].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&p, b).unwrap();
            let e = VolumeSet::open(&p).unwrap().load(0).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("non-finite") && e.contains("(1, 0, 0)"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn monai_pad_crop_offsets() {
        // crop 6 -> 3: MONAI starts at 6//2 - 3//2 = 2 (not (6-3)//2 = 1)
        let d: Vec<f32> = (0..6).map(|v| v as f32).collect();
        assert_eq!(pad_crop_monai(&d, [6, 1, 1], [3, 1, 1], -1.0), vec![2.0, 3.0, 4.0]);
        // pad 3 -> 6: 1 before, 2 after
        assert_eq!(pad_crop_monai(&d[..3], [3, 1, 1], [6, 1, 1], -1.0), vec![-1.0, 0.0, 1.0, 2.0, -1.0, -1.0]);
    }

    #[test]
    fn center_range_matches_python_int() {
        assert_eq!(center_range(10, 1.0), (0, 10));
        assert_eq!(center_range(10, 0.4), (3, 7));
        assert_eq!(center_range(7, 0.4), (2, 4));
    }

    #[test]
    fn plane_stacks_have_the_right_layout() {
        // dims (X, Y, Z) = (2, 3, 4); value = x + 10 y + 100 z
        let dims = [2, 3, 4];
        let mut d = Vec::new();
        for z in 0..4 {
            for y in 0..3 {
                for x in 0..2 {
                    d.push((x + 10 * y + 100 * z) as f32);
                }
            }
        }
        let (s, n, r, c) = plane_stack(&d, dims, Plane::Axial, 1.0);
        assert_eq!((n, r, c), (4, 2, 3));
        // slice z=1, row x=1, col y=2 -> 1 + 20 + 100 = 121, normalised by (0, 321)
        assert!((s[r * c + c + 2] - 121.0 / 321.0).abs() < 1e-6);
        let (_, n, r, c) = plane_stack(&d, dims, Plane::Coronal, 1.0);
        assert_eq!((n, r, c), (3, 2, 4));
        let (_, n, r, c) = plane_stack(&d, dims, Plane::Sagittal, 1.0);
        assert_eq!((n, r, c), (2, 3, 4));
    }
}
