//! `text2ct eval prompt-effects`: does the prompt matter? For findings with an unambiguous voxel
//! signature (pleural effusion by side, cardiomegaly, lung nodule, emphysema), generate pairs from
//! the same noise seed with and without the finding in the report and compare the difference with
//! the finding's signature in real (phantom) data. See `text2ct_eval::prompt_effects` and
//! docs/evaluation/prompt-effects.md.
//!
//! Prompts come from the phantom report writer: pair `k` of a finding uses phantom patient `i`
//! with only that finding switched on (prevalence 1, all others 0) and the same patient with no
//! finding, so the two reports share the patient's wording stream and differ in the finding's
//! sentences.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use text2ct_data::layout::report_text;
use text2ct_eval::prompt_effects::{effects, phantom_findings, signatures, FindingDef};
use text2ct_generate::pipeline::{Pipeline, SampleOptions};
use text2ct_io::preview::{render_planes, save_png, stack_horizontal, stack_vertical, Window};
use text2ct_io::Volume;
use text2ct_phantom::{make_report, sample_params, PhantomConfig};

#[derive(clap::Args)]
pub struct PromptEffectsArgs {
    #[command(flatten)]
    pub device: crate::util::DeviceArg,

    /// Model folder (model.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared manifest whose volumes give the findings' signatures (the training phantoms:
    /// same size and spacing as the generated volumes).
    #[arg(long)]
    pub signatures: PathBuf,
    /// Use at most this many signature volumes.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder: effects.json, effects.md, effects.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Pairs per finding.
    #[arg(long, default_value_t = 6)]
    pub pairs: usize,
    /// Sampler steps (default: the card's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default: the card's).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the phantom patients and of the noise (pair noise seed = seed + patient index).
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
}

/// Phantom report text for patient `index` with only `label` present (or none).
pub fn phantom_prompt(seed: u64, index: u64, label: Option<usize>) -> Result<(String, Vec<u8>)> {
    let mut cfg = PhantomConfig { seed, ..Default::default() };
    cfg.prevalence = [0.0; text2ct_data::labels::NUM_LABELS];
    if let Some(l) = label {
        cfg.prevalence[l] = 1.0;
    }
    let p = sample_params(&cfg, index).context("phantom parameters")?;
    let r = make_report(&p);
    Ok((report_text(&r.findings, &r.impressions), p.labels.iter().map(|&b| b as u8).collect()))
}

/// `pairs` prompt pairs (with, without, patient index) for a finding.
pub fn prompt_pairs(f: &FindingDef, seed: u64, pairs: usize) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for index in 0..(pairs as u64 * 50 + 50) {
        if out.len() == pairs {
            break;
        }
        let (with, labels) = phantom_prompt(seed, index, Some(f.label))?;
        if !f.matches(&labels, &with) {
            continue; // e.g. the other side
        }
        let (without, _) = phantom_prompt(seed, index, None)?;
        out.push((with, without, index));
    }
    if out.len() < pairs {
        bail!("found only {} phantom reports for {:?}", out.len(), f.name);
    }
    Ok(out)
}

fn generate(p: &Pipeline, prompt: &str, seed: u64, opts: &SampleOptions) -> Result<Volume> {
    Ok(p.generate_volume(prompt, seed, None, opts, &mut |_, _| {})?.volume)
}

pub fn run(a: PromptEffectsArgs) -> Result<()> {
    if a.pairs == 0 {
        bail!("--pairs must be positive");
    }
    crate::util::output_dir(&a.out, "--out")?;
    let dev = a.device.get()?;
    let dir = a.model.clone();
    let p = Pipeline::load(&dir, &dev).with_context(|| format!("loading the model {}", dir.display()))?;
    let mut opts = p.default_options();
    if let Some(s) = a.steps {
        opts.steps = s;
    }
    if let Some(g) = a.guidance {
        opts.guidance = g;
    }
    let defs = phantom_findings();
    eprintln!("signatures from {} ...", a.signatures.display());
    let sig = signatures(&a.signatures, &defs, a.limit)?;
    if sig.dims != opts.size {
        bail!(
            "the model generates {:?} voxels but the signature volumes are {:?}: give a prepared set of the model's size",
            opts.size,
            sig.dims
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let total = (defs.len() * a.pairs * 2) as u64;
    let pb = crate::util::progress(total, "volumes");
    let mut all = Vec::new();
    let mut sheet = Vec::new();
    let mut prompts = Vec::new();
    for f in &defs {
        let mut set = Vec::new();
        for (k, (with, without, index)) in prompt_pairs(f, a.seed, a.pairs)?.into_iter().enumerate() {
            let seed = a.seed + index;
            let vw = generate(&p, &with, seed, &opts)?;
            pb.inc(1);
            let vo = generate(&p, &without, seed, &opts)?;
            pb.inc(1);
            if k == 0 {
                let win = if f.name.contains("emphysema") || f.name.contains("nodule") {
                    Window::LUNG
                } else {
                    Window::MEDIASTINUM
                };
                sheet.push(stack_horizontal(&[render_planes(&vw, win, None)?, render_planes(&vo, win, None)?], 8));
            }
            prompts.push(serde_json::json!({"finding": f.name, "seed": seed, "with": with, "without": without}));
            set.push((vw.data().to_vec(), vo.data().to_vec()));
        }
        all.push(set);
    }
    pb.finish_and_clear();
    let rep = effects(&sig, &all)?;
    let json = serde_json::json!({
        "model": dir.display().to_string(),
        "model_hash": p.model_hash,
        "sampler": opts.sampler, "steps": opts.steps, "guidance": opts.guidance,
        "signatures_manifest": a.signatures.display().to_string(),
        "report": rep,
        "prompts": prompts,
    });
    text2ct_io::error::atomic_write_bytes(
        &a.out.join("effects.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let md = format!(
        "# Prompt effects\n\nModel `{}` ({}), sampler {} with {} steps, guidance {}; {} pairs per finding.\n\
         Each cell: Pearson correlation between the mean paired difference (with − without the finding, \
         same noise) and a finding's signature (mean with − mean without in `{}`).\n\n{}\n\
         effects.png: first pair of each finding (rows, in table order): with the finding | without.\n",
        dir.display(),
        &p.model_hash[..12.min(p.model_hash.len())],
        opts.sampler,
        opts.steps,
        opts.guidance,
        a.pairs,
        a.signatures.display(),
        rep.to_markdown()
    );
    text2ct_io::error::atomic_write_bytes(&a.out.join("effects.md"), md.as_bytes())?;
    save_png(&stack_vertical(&sheet), &a.out.join("effects.png"))?;
    println!("{}", rep.to_markdown());
    println!("wrote {}/effects.{{json,md,png}}", a.out.display());
    Ok(())
}
