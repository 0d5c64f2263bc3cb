//! `text2ct eval`: evaluation of generated volumes. `eval fid`: FID between a real and a fake
//! set (MAISI's 2.5D protocol and/or a 3D protocol), written as `fid.json` and `fid.md`;
//! `eval clip`: the 3D-CLIP protocol; `eval sweep`: the guidance sweep (Figure 3); `eval report`:
//! every configured table in one folder. The logic lives in text2ct-eval and text2ct-bench.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use text2ct_eval::fid::{self, FidReport, Plane, Protocol25d, VolumeSet};
use text2ct_models::burn::tensor::Device;

use crate::util::parse_size;

#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Fréchet distance between two volume sets: 2.5D (a 2D backbone on every axial, coronal and
    /// sagittal slice; MAISI's protocol) and/or 3D (a 3D backbone on whole volumes). A set is a
    /// folder of NIfTI files (searched recursively), a prepared data set (folder with
    /// manifest.jsonl) or a manifest.jsonl. See docs/evaluation/fid.md.
    Fid(FidArgs),
    /// Evaluate a trained 3D CLIP on a prepared manifest (docs/evaluation/clip.md): zero-shot
    /// over the 18 abnormalities with two prompt styles (AUC, accuracy, precision; macro and
    /// weighted), volume-to-volume MAP@K (K = 1, 5, 10, 50; plus CT-CLIP's computation) and
    /// report-to-volume Recall@K (K = 5, 10, 50, 100) against random baselines. Writes
    /// clip_eval.json and clip_eval.md.
    Clip(ClipEvalArgs),
    /// Does the prompt matter? Paired generations with and without a finding (pleural effusion
    /// by side, cardiomegaly, lung nodule, emphysema; same noise) compared with each finding's
    /// voxel signature in a prepared phantom set. Writes effects.json, effects.md, effects.png.
    PromptEffects(crate::cmd::effects::PromptEffectsArgs),
    /// The guidance sweep (the paper's Figure 3): generate the test reports at every guidance
    /// scale w from the same noise (only w changes), then FID 3D (and 2.5D with a 2D backbone)
    /// of each scale's set against the real set, and with --classifier CT-Net's precision and
    /// AUC against the reports' labels. Writes OUT/w{w}/ volumes, sweep.json, sweep.md,
    /// sweep.png; re-running skips volumes already written. See docs/evaluation/report.md.
    Sweep(SweepArgs),
    /// The one-command evaluation report: run the sections an EVAL.toml configures ([fid] →
    /// Table 2, [factual] → Table 3, [clip] → Table 4, [ablation] → Table 5, [augmentation] →
    /// Table 6, [sweep] → Figure 3) and write report.md, report.json, the PNGs and a provenance
    /// block into one folder (configs/eval_phantom.toml; docs/evaluation/report.md).
    Report(ReportArgs),
    /// Factual correctness (the paper's Table 3; docs/evaluation/factual.md): a trained CT-Net
    /// classifier predicts the 18 labels of every volume; AUC and precision (per class, macro,
    /// weighted) against the labels of each volume's report. Several sets give one row each,
    /// "real" first. Writes factual.json and factual.md.
    Factual(FactualArgs),
    /// The augmentation study (the paper's Table 6): CT-Net trained on real only, synthetic only
    /// and real + synthetic (same steps and seed), tested on the same real set. Writes
    /// augment.json, augment.md and augment.png into study.out_dir. Resumable.
    Augment(AugmentArgs),
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The evaluation config (TOML; relative paths are taken from the working directory).
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub device: crate::util::DeviceArg,

    /// The model folder (model.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The test reports (CT-RATE reports CSV, or a CSV with id and prompt columns).
    #[arg(long)]
    pub reports: PathBuf,
    /// The real set (NIfTI folder, prepared folder or manifest.jsonl).
    #[arg(long)]
    pub real: PathBuf,
    /// Guidance scales, comma-separated.
    #[arg(long, default_value = "0,1,3,5,7,10,15")]
    pub guidance: String,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Volumes per report (seeds seed + row * K + k, the same at every scale).
    #[arg(long, default_value_t = 1)]
    pub count_per_report: usize,
    /// Sampling steps (default: the model card's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Base seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N reports.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output size X,Y,Z (default: the card's).
    #[arg(long)]
    pub size: Option<String>,
    /// VAE sliding window in latent voxels X,Y,Z (default: the card's).
    #[arg(long)]
    pub decode_window: Option<String>,
    /// FID backbone (at most one 3D and one 2D): ctnet (a trained classifier's weights: the
    /// offline choice for phantoms), medicalnet-resnet10/18/34/50, resnet50-2d, resnet18-2d.
    #[arg(long, required = true)]
    pub backbone: Vec<String>,
    /// Weights for each --backbone, in order.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Optional JSON architecture for each --backbone, in order.
    #[arg(long)]
    pub backbone_config: Vec<PathBuf>,
    /// Pad/crop every volume to X,Y,Z before the FID (default: the sets must share one grid).
    #[arg(long)]
    pub fid_size: Option<String>,
    /// Planes of the 2.5D FID.
    #[arg(long, default_value = "axial,coronal,sagittal")]
    pub planes: String,
    /// Fraction of central slices per plane in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub center_fraction: f64,
    /// Slices per forward pass of the 2D backbone.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// A CT-Net classifier (folder, `train classifier` run folder, or its ctnet.safetensors):
    /// adds AUC and precision per w against the reports' labels (docs/evaluation/factual.md).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// The reports' labels for --classifier (labels CSV or prepared manifest; default: the
    /// --real set's manifest when it is a prepared set).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Decision threshold of precision (default: the classifier's, 0.5).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Pad / crop generated volumes to the classifier's training shape.
    #[arg(long)]
    pub pad_crop: bool,
}

#[derive(clap::Args)]
pub struct FactualArgs {
    /// The classifier folder (classifier.json, ctnet_config.json, ctnet.safetensors), e.g. the
    /// final/ folder of `text2ct train classifier`; its run folder or a file in the classifier
    /// folder (its ctnet.safetensors) name it too.
    #[arg(long)]
    pub classifier: PathBuf,
    /// A volume set, as NAME=PATH or PATH (repeatable): a folder of NIfTI files (generate's
    /// output; searched recursively), a prepared folder or manifest.jsonl. A set named "real"
    /// is the first row.
    #[arg(long, required = true)]
    pub volumes: Vec<String>,
    /// Labels, as NAME=PATH (for that set) or PATH (for every set without its own): CT-RATE's
    /// labels CSV (VolumeName + the 18 label columns) or a prepared manifest. NIfTI volumes are
    /// matched by the id in their JSON sidecar, else by file name (without _seed<N>). A
    /// manifest set without --labels uses its own labels.
    #[arg(long)]
    pub labels: Vec<String>,
    /// Row name when a single set is given without NAME= (default: the folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Decision threshold of precision on the sigmoid (default: the classifier's, 0.5).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Centre pad (-1000 HU) / crop volumes whose shape differs from the classifier's training
    /// shape (by default that is an error).
    #[arg(long)]
    pub pad_crop: bool,
    /// Volumes per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct AugmentArgs {
    /// The study config (TOML; see configs/eval_augment_phantom.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Override study.out_dir.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Override train.steps.
    #[arg(long)]
    pub steps: Option<usize>,
}

#[derive(clap::Args)]
pub struct ClipEvalArgs {
    /// The trained CLIP: a folder with clip_config.json + clip.safetensors (a run's final/ or a
    /// checkpoint), a training run folder, or a .safetensors file with clip_config.json beside it.
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared manifest (manifest.jsonl written by `text2ct prepare`) with reports and labels.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Volumes / texts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Use at most this many volumes (first in the manifest).
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(clap::Args)]
pub struct FidArgs {
    /// The reference set.
    #[arg(long)]
    pub real: PathBuf,
    /// The generated set.
    #[arg(long)]
    pub fake: PathBuf,
    /// Backbone name, repeatable (one 2D and one 3D for --mode both): resnet50-2d, resnet18-2d
    /// (torchvision or RadImageNet weights), medicalnet-resnet10/18/34/50, astra-resnet152 (the CT-pretrained Astra / Merlin encoder), ctnet.
    #[arg(long, required = true)]
    pub backbone: Vec<String>,
    /// Weights file for each --backbone, in the same order (.pt/.pth/.safetensors).
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Optional JSON architecture for each --backbone (the model's config), in the same order;
    /// by default the preset of the name (ctnet: read off the weights).
    #[arg(long)]
    pub backbone_config: Vec<PathBuf>,
    /// 2.5d, 3d or both (default: what the backbones allow).
    #[arg(long)]
    pub mode: Option<String>,
    /// Planes of the 2.5D FID.
    #[arg(long, default_value = "axial,coronal,sagittal")]
    pub planes: String,
    /// Fraction of central slices per plane in (0, 1] (MAISI's example: 0.4).
    #[arg(long, default_value_t = 1.0)]
    pub center_fraction: f64,
    /// Pad (-1000 HU) / centre-crop every volume to X,Y,Z voxels first (default: keep; ctnet:
    /// its input size).
    #[arg(long)]
    pub size: Option<String>,
    /// Slices per forward pass of the 2D backbone.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Output folder for fid.json and fid.md.
    #[arg(long, default_value = "fid")]
    pub out: PathBuf,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Fid(a) => run_fid(a),
        EvalCommand::Clip(a) => run_clip(a),
        EvalCommand::PromptEffects(a) => crate::cmd::effects::run(a),
        EvalCommand::Sweep(a) => run_sweep(a),
        EvalCommand::Report(a) => run_report(a),
        EvalCommand::Factual(a) => run_factual(a),
        EvalCommand::Augment(a) => run_augment(a),
    }
}

fn run_fid(a: FidArgs) -> Result<()> {
    if a.backbone.len() != a.weights.len() {
        bail!("give one --weights per --backbone ({} backbones, {} weights)", a.backbone.len(), a.weights.len());
    }
    if !a.backbone_config.is_empty() && a.backbone_config.len() != a.backbone.len() {
        bail!("give one --backbone-config per --backbone, or none");
    }
    let size = a.size.as_deref().map(parse_size).transpose()?;
    let planes =
        a.planes.split(',').filter(|s| !s.trim().is_empty()).map(Plane::parse).collect::<Result<Vec<_>, _>>()?;
    if !(a.center_fraction > 0.0 && a.center_fraction <= 1.0) {
        bail!("--center-fraction must be in (0, 1], got {}", a.center_fraction);
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    crate::util::output_dir(&a.out, "--out")?;
    let real = VolumeSet::open(&a.real).context("--real")?;
    let fake = VolumeSet::open(&a.fake).context("--fake")?;
    for (what, s) in [("--real", &real), ("--fake", &fake)] {
        if s.len() < 2 {
            bail!("{what} {}: {} volume(s); an FID needs at least 2 per set", s.path.display(), s.len());
        }
    }
    let dev = Device::flex();
    let mut backbones = Vec::new();
    for (i, (name, w)) in a.backbone.iter().zip(&a.weights).enumerate() {
        let cfg = a.backbone_config.get(i).map(|p| p.as_path());
        let ctnet_size = size.map(|s| [s[1], s[0]]);
        let b = fid::load_backbone(name, w, cfg, ctnet_size, &dev).with_context(|| format!("backbone {name}"))?;
        eprintln!(
            "backbone {name}: {} layout, {}-d features, sha256 {}",
            b.info.layout, b.info.feature_dim, b.info.weights_sha256
        );
        backbones.push(b);
    }
    let n2d = backbones.iter().filter(|b| b.is_2d()).count();
    let n3d = backbones.len() - n2d;
    let mode = match a.mode.as_deref() {
        Some(m) => m.to_ascii_lowercase(),
        None if n2d > 0 && n3d > 0 => "both".into(),
        None if n2d > 0 => "2.5d".into(),
        None => "3d".into(),
    };
    let (want2d, want3d) = match mode.as_str() {
        "2.5d" | "25d" | "2d" => (true, false),
        "3d" => (false, true),
        "both" => (true, true),
        m => bail!("--mode must be 2.5d, 3d or both, got {m:?}"),
    };
    if want2d && n2d == 0 {
        bail!("--mode {mode} needs a 2D backbone (resnet50-2d or resnet18-2d)");
    }
    if want3d && n3d == 0 {
        bail!("--mode {mode} needs a 3D backbone (medicalnet-resnet10/18/34/50 or ctnet)");
    }
    if !want2d && n2d > 0 || !want3d && n3d > 0 {
        bail!("--mode {mode} does not use every --backbone given");
    }
    // The grid's memory, before any volume is read (each volume is checked again with its own
    // dims when it is read).
    if let Some(size) = size {
        for b in &backbones {
            let bytes = text2ct_eval::memory::fid_volume_bytes(&b.model, size, size, a.batch);
            text2ct_eval::memory::check_fits(bytes, size, &format!("--size with {}", b.info.name))?;
        }
    }
    let mut report = FidReport::new(&real, &fake);
    let total = real.len() + fake.len();
    for b in &backbones {
        let mut done = 0usize;
        let pb = crate::util::progress(total as u64, &b.info.name);
        let mut progress = |_: &str, _: usize, _: usize| {
            done += 1;
            pb.set_position(done as u64);
        };
        let run = if b.is_2d() {
            let proto = Protocol25d {
                planes: planes.clone(),
                size,
                center_fraction: a.center_fraction,
                batch: a.batch,
                ..Default::default()
            };
            fid::fid_25d(&real, &fake, b, &proto, &mut progress)
        } else {
            fid::fid_3d(&real, &fake, b, size, &mut progress)
        }
        .with_context(|| format!("FID with {}", b.info.name))?;
        pb.finish_and_clear();
        println!("{} FID ({}): {:.6}", run.mode, b.info.name, run.fid);
        for p in &run.planes {
            println!("  {:<9} {:.6}", p.plane.name(), p.fid);
        }
        report.runs.push(run);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    text2ct_io::error::atomic_write_bytes(&a.out.join("fid.json"), json.as_bytes())?;
    text2ct_io::error::atomic_write_bytes(&a.out.join("fid.md"), report.to_markdown().as_bytes())?;
    println!("wrote {} and {}", a.out.join("fid.json").display(), a.out.join("fid.md").display());
    Ok(())
}

fn run_clip(a: ClipEvalArgs) -> Result<()> {
    use text2ct_bench::clip::{run_clip_eval, write_clip_eval, ClipEvalConfig};
    crate::util::output_dir(&a.out, "--out")?;
    let cfg = ClipEvalConfig { model: a.model, manifest: a.manifest, batch: a.batch, limit: a.limit };
    let rep = run_clip_eval(&cfg, &Device::flex(), &mut |m| eprintln!("{m}"))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_clip_eval(&rep, &a.out)?;
    println!("{}", rep.to_markdown());
    println!("wrote {} and {}", a.out.join("clip_eval.json").display(), a.out.join("clip_eval.md").display());
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    use text2ct_bench::fidset::{BackboneSpec, FidSpec};
    use text2ct_bench::sweep::{parse_guidance, run_sweep, SweepConfig, SweepEvent};
    let one =
        |names: &[String], weights: &[PathBuf], configs: &[PathBuf], want2d: bool| -> Result<Option<BackboneSpec>> {
            let idx: Vec<usize> = (0..names.len()).filter(|&i| names[i].ends_with("-2d") == want2d).collect();
            match idx.as_slice() {
                [] => Ok(None),
                [i] => Ok(Some(BackboneSpec {
                    name: names[*i].clone(),
                    weights: weights[*i].clone(),
                    config: configs.get(*i).cloned(),
                })),
                _ => bail!("give at most one {} --backbone", if want2d { "2D" } else { "3D" }),
            }
        };
    if a.backbone.len() != a.weights.len() {
        bail!("give one --weights per --backbone ({} backbones, {} weights)", a.backbone.len(), a.weights.len());
    }
    if !a.backbone_config.is_empty() && a.backbone_config.len() != a.backbone.len() {
        bail!("give one --backbone-config per --backbone, or none");
    }
    let fid = FidSpec {
        backbone_3d: one(&a.backbone, &a.weights, &a.backbone_config, false)?,
        backbone_2d: one(&a.backbone, &a.weights, &a.backbone_config, true)?,
        size: a.fid_size.as_deref().map(parse_size).transpose()?,
        planes: a.planes.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        center_fraction: a.center_fraction,
        batch: a.batch,
    };
    let cfg = SweepConfig {
        model: a.model,
        reports: a.reports,
        real: a.real,
        guidance: parse_guidance(&a.guidance)?,
        count_per_report: a.count_per_report,
        steps: a.steps,
        seed: a.seed,
        size: a.size.as_deref().map(parse_size).transpose()?,
        decode_window: a.decode_window.as_deref().map(parse_size).transpose()?,
        limit: a.limit,
        fid,
        classifier: a.classifier,
        labels: a.labels,
        threshold: a.threshold,
        pad_crop: a.pad_crop,
    };
    crate::util::output_dir(&a.out, "--out")?;
    let pb = crate::util::progress(0, "sweep");
    let rep = run_sweep(&cfg, &a.out, &a.device.get()?, &mut |e| match e {
        SweepEvent::Scale { w, index, total } => {
            pb.set_message(format!("w={w} {}/{total}", index + 1));
            pb.set_position(0);
        }
        SweepEvent::Volume { done, total, .. } => {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
        SweepEvent::Row(r) => pb.suspend(|| {
            println!(
                "w = {}: {} volumes ({} generated, {} present); FID 3D {}, FID 2.5D {}{}",
                r.guidance,
                r.n_volumes,
                r.generated,
                r.skipped,
                r.fid_3d.map_or("-".into(), |v| format!("{v:.6}")),
                r.fid_25d.map_or("-".into(), |v| format!("{v:.6}")),
                r.factual.as_ref().map_or(String::new(), |m| format!(
                    "; precision macro {} / weighted {}",
                    m.precision.macro_avg.map_or("-".into(), |v| format!("{v:.4}")),
                    m.precision.weighted_avg.map_or("-".into(), |v| format!("{v:.4}"))
                ))
            )
        }),
        _ => {}
    })?;
    pb.finish_and_clear();
    println!("{}", rep.table());
    println!("wrote {}, sweep.md and sweep.png", a.out.join("sweep.json").display());
    Ok(())
}

fn run_report(a: ReportArgs) -> Result<()> {
    use text2ct_bench::report::{run_report, EvalConfig, ReportRun};
    let cfg = EvalConfig::from_file(&a.config)?;
    crate::util::output_dir(&a.out, "--out")?;
    let run = ReportRun { config: &cfg, config_path: &a.config, command: std::env::args().collect(), out: &a.out };
    let dev = a.device.get()?;
    let rep = run_report(&run, &dev, &mut |section, m| eprintln!("[{section}] {m}"))?;
    for t in &rep.provenance.sections {
        println!("[{}] {:.1} s", t.section, t.seconds);
    }
    println!("wrote {} and report.json", a.out.join("report.md").display());
    Ok(())
}

/// `NAME=PATH` or `PATH`.
fn split_named(s: &str) -> (Option<String>, PathBuf) {
    if let Some((n, p)) = s.split_once('=') {
        if !n.is_empty() && !p.is_empty() && !n.contains('/') && !n.contains(std::path::MAIN_SEPARATOR) {
            return (Some(n.to_string()), PathBuf::from(p));
        }
    }
    (None, PathBuf::from(s))
}

fn run_factual(a: FactualArgs) -> Result<()> {
    use text2ct_eval::factual::{evaluate, Classifier, FactualOptions, LabeledSet, PredictOptions};
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    crate::util::output_dir(&a.out, "--out")?;
    let mut sets: Vec<(Option<String>, PathBuf)> = a.volumes.iter().map(|v| split_named(v)).collect();
    if sets.len() == 1 && sets[0].0.is_none() {
        sets[0].0 = a.name.clone();
    } else if a.name.is_some() {
        bail!("--name is for a single --volumes PATH; name several sets as --volumes NAME=PATH");
    }
    let mut named_labels = std::collections::HashMap::new();
    let mut shared_labels: Option<PathBuf> = None;
    for l in &a.labels {
        match split_named(l) {
            (Some(n), p) => {
                if named_labels.insert(n.to_ascii_lowercase(), p).is_some() {
                    bail!("--labels {n}=…: given twice");
                }
            }
            (None, p) => {
                if shared_labels.replace(p).is_some() {
                    bail!("give one --labels PATH for all sets, or --labels NAME=PATH per set");
                }
            }
        }
    }
    let mut opened = Vec::new();
    for (name, path) in sets {
        let name = name.unwrap_or_else(|| {
            let p = if path.file_name().is_some_and(|f| f == "manifest.jsonl") {
                path.parent()
            } else {
                Some(path.as_path())
            };
            p.and_then(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "set".into())
        });
        let labels = named_labels.remove(&name.to_ascii_lowercase()).or_else(|| shared_labels.clone());
        let set =
            LabeledSet::open(&path, labels.as_deref()).with_context(|| format!("set {name} ({})", path.display()))?;
        eprintln!("set {name}: {} volumes from {}, labels {}", set.len(), path.display(), set.labels_path.display());
        opened.push((name, set));
    }
    if let Some(n) = named_labels.keys().next() {
        bail!("--labels {n}=…: no --volumes set of that name");
    }
    let dev = Device::flex();
    let clf = Classifier::resolve(&a.classifier)
        .and_then(|d| Classifier::load(&d, &dev))
        .with_context(|| format!("loading {}", a.classifier.display()))?;
    let total: usize = opened.iter().map(|(_, s)| s.len()).sum();
    let pb = crate::util::progress(total as u64, "ctnet");
    let mut base = 0usize;
    let mut cur = String::new();
    let mut last = 0usize;
    let opts = FactualOptions {
        predict: PredictOptions { batch: a.batch, pad_crop: a.pad_crop },
        threshold: a.threshold,
        keep_predictions: true,
    };
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be in [0, 1], got {t}");
        }
    }
    let mut rep = evaluate(&clf, opened, &opts, &mut |name, done, _| {
        if name != cur {
            base += last;
            cur = name.to_string();
        }
        last = done;
        pb.set_position((base + done) as u64);
    })?;
    pb.finish_and_clear();
    rep.meta.insert("command".into(), std::env::args().collect::<Vec<_>>().join(" ").into());
    rep.meta.insert("text2ct_version".into(), env!("CARGO_PKG_VERSION").into());
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    text2ct_io::error::atomic_write_bytes(&a.out.join("factual.json"), rep.to_json().as_bytes())?;
    let md = rep.to_markdown();
    text2ct_io::error::atomic_write_bytes(&a.out.join("factual.md"), md.as_bytes())?;
    println!("{}", text2ct_eval::factual::table3_markdown("Set", &rep.rows));
    println!("wrote {} and {}", a.out.join("factual.json").display(), a.out.join("factual.md").display());
    Ok(())
}

fn run_augment(a: AugmentArgs) -> Result<()> {
    use text2ct_bench::augment::{run_study, AugmentStudyConfig};
    let cfg = AugmentStudyConfig::from_file_with(&a.config, a.out_dir.as_deref(), a.steps)
        .with_context(|| format!("reading {}", a.config.display()))?;
    crate::util::output_dir(&cfg.study.out_dir, "the output folder (--out-dir or study.out_dir)")?;
    let pb = crate::util::progress(0, "augment");
    let mut on_event = |ev: text2ct_train::ProgressEvent| match ev {
        text2ct_train::ProgressEvent::Start { start_step, total_steps, .. } => {
            pb.set_length(total_steps as u64);
            pb.set_position(start_step as u64);
        }
        text2ct_train::ProgressEvent::Step { step, .. } => pb.set_position(step as u64),
        text2ct_train::ProgressEvent::Message(m) => pb.println(m),
        _ => {}
    };
    let rep = run_study(&cfg, &mut on_event)?;
    pb.finish_and_clear();
    let rows: Vec<_> = rep.results.iter().map(|r| r.test.clone()).collect();
    println!("{}", text2ct_eval::factual::table3_markdown("Training set", &rows));
    let o = &cfg.study.out_dir;
    println!(
        "wrote {}, {} and {}",
        o.join("augment.json").display(),
        o.join("augment.md").display(),
        o.join("augment.png").display()
    );
    Ok(())
}
