//! FID of several generated sets against one real set, with the real set's features computed
//! once (the guidance sweep scores seven sets, Table 2 one row per method). The protocol is
//! text2ct-eval's (`fid::features_25d`, `fid::features_3d`, `frechet`), see
//! `docs/evaluation/fid.md`; this module only caches and checks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use text2ct_eval::fid::{self, Backbone, BackboneInfo, LoadedBackbone, Plane, PlaneFid, Protocol25d, VolumeSet};
use text2ct_eval::fid_from_features;
use text2ct_models::burn::tensor::Device;

use crate::error::{input, BenchError, Result};

/// A backbone by name, with the weights (and optionally the architecture JSON) users bring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// One of `text2ct_eval::fid::BACKBONE_NAMES`.
    pub name: String,
    pub weights: PathBuf,
    /// The model's config as JSON (default: the name's preset; ctnet: read off the weights).
    #[serde(default)]
    pub config: Option<PathBuf>,
}

fn default_planes() -> Vec<String> {
    vec!["axial".into(), "coronal".into(), "sagittal".into()]
}
fn default_fraction() -> f64 {
    1.0
}
fn default_batch() -> usize {
    8
}

/// How to compute FIDs: a 3D backbone (FID 3D) and/or a 2D backbone (FID 2.5D per plane).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidSpec {
    #[serde(default)]
    pub backbone_3d: Option<BackboneSpec>,
    #[serde(default)]
    pub backbone_2d: Option<BackboneSpec>,
    /// Pad (−1000 HU) / centre-crop every volume to this grid first. Without it every volume of
    /// both sets must already share one grid (ctnet: its input size).
    #[serde(default)]
    pub size: Option<[usize; 3]>,
    #[serde(default = "default_planes")]
    pub planes: Vec<String>,
    #[serde(default = "default_fraction")]
    pub center_fraction: f64,
    /// Slices per forward pass of the 2D backbone (does not change results).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

impl Default for FidSpec {
    fn default() -> Self {
        FidSpec {
            backbone_3d: None,
            backbone_2d: None,
            size: None,
            planes: default_planes(),
            center_fraction: 1.0,
            batch: 8,
        }
    }
}

impl FidSpec {
    /// Check what can be checked without loading anything.
    pub fn validate(&self) -> Result<()> {
        if self.backbone_3d.is_none() && self.backbone_2d.is_none() {
            return input(
                "no FID backbone: give a 3D backbone (ctnet with a trained classifier's weights is the offline \
                 choice for phantoms; medicalnet-resnet*) and/or a 2D one (resnet50-2d, resnet18-2d)",
            );
        }
        for (what, b) in [("3D", &self.backbone_3d), ("2D", &self.backbone_2d)] {
            if let Some(b) = b {
                if !fid::BACKBONE_NAMES.contains(&b.name.as_str()) {
                    return input(format!(
                        "unknown {what} backbone {:?}; known: {}",
                        b.name,
                        fid::BACKBONE_NAMES.join(", ")
                    ));
                }
                let is2d = b.name.ends_with("-2d");
                if is2d != (what == "2D") {
                    return input(format!("{:?} is not a {what} backbone", b.name));
                }
                if !b.weights.is_file() {
                    return input(format!("{what} backbone weights {}: no such file", b.weights.display()));
                }
                if let Some(c) = &b.config {
                    if !c.is_file() {
                        return input(format!("{what} backbone config {}: no such file", c.display()));
                    }
                }
            }
        }
        self.planes()?;
        if !(self.center_fraction > 0.0 && self.center_fraction <= 1.0) {
            return input(format!("center_fraction must be in (0, 1], got {}", self.center_fraction));
        }
        if self.batch == 0 {
            return input("batch must be positive");
        }
        if self.size.is_some_and(|s| s.contains(&0)) {
            return input("size must be positive on every axis");
        }
        Ok(())
    }

    pub fn planes(&self) -> Result<Vec<Plane>> {
        if self.planes.is_empty() {
            return input("no planes selected for the 2.5D FID");
        }
        Ok(self.planes.iter().map(|p| Plane::parse(p)).collect::<Result<Vec<_>, _>>()?)
    }
}

/// The FIDs of one generated set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FidScores {
    /// FID 2.5D per plane (empty without a 2D backbone).
    pub planes: Vec<PlaneFid>,
    /// Mean of the planes.
    pub fid_25d: Option<f64>,
    pub fid_3d: Option<f64>,
    pub n_real: usize,
    pub n_fake: usize,
}

/// Backbones loaded once, the real set's features computed once.
pub struct FidEngine {
    pub spec: FidSpec,
    pub real: VolumeSet,
    pub backbone_3d: Option<LoadedBackbone>,
    pub backbone_2d: Option<LoadedBackbone>,
    protocol: Protocol25d,
    real_3d: Option<Vec<Vec<f32>>>,
    real_25d: Option<Vec<Vec<Vec<f32>>>>,
    real_shape: Option<[usize; 3]>,
}

/// Progress of feature extraction: `(set label, volume id, done, total)`.
pub type FidProgress<'a> = &'a mut dyn FnMut(&str, &str, usize, usize);

fn load(b: &BackboneSpec, ctnet_size: Option<[usize; 2]>, dev: &Device) -> Result<LoadedBackbone> {
    fid::load_backbone(&b.name, &b.weights, b.config.as_deref(), ctnet_size, dev)
        .map_err(|e| BenchError::Input(format!("backbone {} ({}): {e}", b.name, b.weights.display())))
}

fn check_size(set: &VolumeSet, what: &str) -> Result<()> {
    if set.len() < 2 {
        return input(format!(
            "the {what} set {} has {} volume(s); an FID needs at least 2 per set",
            set.path.display(),
            set.len()
        ));
    }
    Ok(())
}

impl FidEngine {
    /// Open the real set and load the backbones. `grid` is the size the generated volumes will
    /// have when known (the sweep); it sets CT-Net's in-plane size when `spec.size` does not.
    pub fn new(spec: &FidSpec, real: &Path, grid: Option<[usize; 3]>, dev: &Device) -> Result<FidEngine> {
        spec.validate()?;
        let real = VolumeSet::open(real).map_err(|e| BenchError::Input(format!("real set: {e}")))?;
        check_size(&real, "real")?;
        let ctnet_size = spec.size.or(grid).map(|s| [s[1], s[0]]);
        let backbone_3d = spec.backbone_3d.as_ref().map(|b| load(b, ctnet_size, dev)).transpose()?;
        let backbone_2d = spec.backbone_2d.as_ref().map(|b| load(b, None, dev)).transpose()?;
        let protocol = Protocol25d {
            planes: spec.planes()?,
            size: spec.size,
            center_fraction: spec.center_fraction,
            batch: spec.batch,
            ..Default::default()
        };
        Ok(FidEngine {
            spec: spec.clone(),
            real,
            backbone_3d,
            backbone_2d,
            protocol,
            real_3d: None,
            real_25d: None,
            real_shape: None,
        })
    }

    /// What the reports say about the backbones (3D first).
    pub fn backbones(&self) -> Vec<BackboneInfo> {
        self.backbone_3d.iter().chain(&self.backbone_2d).map(|b| b.info.clone()).collect()
    }

    /// The protocol parameters, for the report.
    pub fn protocol(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.spec.size,
            "planes": self.protocol.planes,
            "center_fraction": self.protocol.center_fraction,
            "hu_clip": self.protocol.hu_clip,
            "orientation": self.protocol.orientation,
            "channel_order_2d": self.protocol.channel_order,
            "channel_means_2d": self.protocol.channel_means,
            "frechet": "float64 mean and unbiased covariance (text2ct-eval frechet)",
        })
    }

    /// Without a common `size`, both sets must share one grid (a set's first volume stands for it).
    fn check_grid(&mut self, fake: &VolumeSet) -> Result<()> {
        if self.pads() {
            return Ok(());
        }
        let f = fake.load(0)?.dims();
        self.check_dims(f, &format!("the generated set {} has {f:?} ({})", fake.path.display(), fake.id(0)))
    }

    /// Whether every volume is padded/cropped to one grid anyway (a `size`, or CT-Net's input).
    fn pads(&self) -> bool {
        self.spec.size.is_some() || matches!(self.backbone_3d.as_ref().map(|b| &b.model), Some(Backbone::CtNet(_)))
    }

    /// Check that generated volumes of `dims` can be compared with the real set (before
    /// generating them); `what` describes them in the error.
    pub fn check_dims(&mut self, dims: [usize; 3], what: &str) -> Result<()> {
        if self.pads() {
            return Ok(());
        }
        if self.real_shape.is_none() {
            self.real_shape = Some(self.real.load(0)?.dims());
        }
        let r = self.real_shape.unwrap_or(dims);
        if dims != r {
            return input(format!(
                "mismatched sets: the real set {} has {r:?} volumes ({}), {what}; set a common size \
                 (size = [X, Y, Z], --fid-size) to pad/crop both to one grid",
                self.real.path.display(),
                self.real.id(0),
            ));
        }
        Ok(())
    }

    /// FID 3D and/or 2.5D of `fake` against the real set.
    pub fn score(&mut self, fake: &VolumeSet, progress: FidProgress) -> Result<FidScores> {
        check_size(fake, "generated")?;
        self.check_grid(fake)?;
        let mut out = FidScores { n_real: self.real.len(), n_fake: fake.len(), ..Default::default() };
        if let Some(b) = &self.backbone_3d {
            if self.real_3d.is_none() {
                let mut p = |id: &str, i: usize, n: usize| progress("real", id, i, n);
                self.real_3d = Some(fid::features_3d(&self.real, &b.model, self.spec.size, &mut p)?);
            }
            let mut p = |id: &str, i: usize, n: usize| progress("generated", id, i, n);
            let ff = fid::features_3d(fake, &b.model, self.spec.size, &mut p)?;
            let fr = self.real_3d.as_deref().unwrap_or_default();
            out.fid_3d = Some(fid_from_features(fr, &ff)?);
        }
        if let Some(b) = &self.backbone_2d {
            let Backbone::ResNet2d(net) = &b.model else {
                return input(format!("{} is not a 2D backbone", b.info.name));
            };
            if self.real_25d.is_none() {
                let mut p = |id: &str, i: usize, n: usize| progress("real", id, i, n);
                self.real_25d = Some(fid::features_25d(&self.real, net, &self.protocol, &mut p)?);
            }
            let mut p = |id: &str, i: usize, n: usize| progress("generated", id, i, n);
            let ff = fid::features_25d(fake, net, &self.protocol, &mut p)?;
            let fr = self.real_25d.as_deref().unwrap_or_default();
            for (pi, &plane) in self.protocol.planes.iter().enumerate() {
                let fid = fid_from_features(&fr[pi], &ff[pi]).map_err(|e| {
                    BenchError::Input(format!(
                        "{} plane: {e} ({} real, {} generated slices)",
                        plane.name(),
                        fr[pi].len(),
                        ff[pi].len()
                    ))
                })?;
                out.planes.push(PlaneFid { plane, fid, n_real: fr[pi].len(), n_fake: ff[pi].len() });
            }
            out.fid_25d = Some(out.planes.iter().map(|p| p.fid).sum::<f64>() / out.planes.len() as f64);
        }
        Ok(out)
    }
}
