//! `text2ct generate`: report text in, CT volumes out.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use text2ct_generate::pipeline::Pipeline;
use text2ct_generate::{output, JobList, Shard};
use text2ct_models::burn::prelude::{Tensor, TensorData};
use text2ct_models::NpyArray;

use crate::util::parse_size;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model folder with a model.json card (default: $TEXT2CT_MODEL, else the embedded phantom
    /// model `phantom-default`). For Text2CT's released weights, put the three files in a folder
    /// and run `text2ct model init-release DIR`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// One report to generate from, e.g. "Findings: … Impression: …".
    #[arg(long, conflicts_with = "reports")]
    pub prompt: Option<String>,
    /// A CSV of reports: CT-RATE's (VolumeName, Findings_EN, Impressions_EN) or one with a
    /// `prompt` column (and optionally `id`).
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Output folder: {id}_seed{S}.nii.gz (int16 HU), .png (preview), .json (sidecar).
    #[arg(long, default_value = "out/generated")]
    pub out: PathBuf,
    /// Sampling steps (default from the card; the release uses 30).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale w (default from the card; the release uses 5).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// A negative prompt: guidance steers away from this text instead of from the zero
    /// context (`v = v_n + w (v_c − v_n)`, as diffusers' `negative_prompt`; the release uses
    /// none), e.g. "Left pleural effusion." to push a right-sided effusion away from the left.
    /// Recorded in each sidecar.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Base seed. Volume k of row r gets seed + r * count + k, whatever the sharding; seed 0 is
    /// an ordinary seed (not "random").
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Volumes per prompt.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Generate only rows r with r mod N == I (0-based), e.g. --shard $SLURM_ARRAY_TASK_ID/16.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output size X,Y,Z (default from the card).
    #[arg(long)]
    pub size: Option<String>,
    /// rflow, ddpm or ddim (default from the card).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Rectified flow without the release's float16 timestep rounding and next-step truncation.
    #[arg(long)]
    pub exact: bool,
    /// Start from this noise (.npy, [1, C, X/4, Y/4, Z/4]) instead of the seeded noise, to
    /// reproduce a reference run exactly (single volume only).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    #[command(flatten)]
    pub decode: crate::util::DecodeArgs,
    /// The most memory one volume may use, e.g. 8G (default: what the machine has available).
    /// Without a decode option, a decoding that fits is chosen when the model card's does not:
    /// one pass in more slabs, else a smaller sliding window; the sidecar records it. A job whose
    /// estimate still exceeds it is refused before any work.
    #[arg(long, value_name = "BYTES")]
    pub max_memory: Option<String>,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
    #[command(flatten)]
    pub precision: crate::util::PrecisionArg,
    /// Regenerate volumes whose sidecar already exists (default: skip them, so a killed job
    /// can simply be restarted).
    #[arg(long)]
    pub overwrite: bool,
    /// Also write each volume as a DICOM CT series, {id}_seed{S}_dicom/IM0001.dcm … (int16 HU,
    /// geometry from the NIfTI; marked SYNTHETIC in PatientName, ImageType and ImageComments,
    /// which holds the prompt and seed), for viewers and PACS test systems without NIfTI.
    #[arg(long)]
    pub dicom: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = a.device.get()?;
    let precision = a.precision.get(&device)?;
    let model = match a.model.clone().or_else(|| std::env::var_os("TEXT2CT_MODEL").map(PathBuf::from)) {
        Some(m) => m,
        None => {
            let dir = text2ct_generate::default_model::materialize()?;
            eprintln!(
                "no --model: using the embedded default `{}` (small models trained on procedural phantoms, not \
                 patients; see models/phantom-default/README.md)",
                text2ct_generate::default_model::NAME
            );
            dir
        }
    };
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if let Some(g) = a.guidance {
        text2ct_generate::limits::check_guidance(g).context("--guidance")?;
    }
    let shard = match &a.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let jobs = match (&a.prompt, &a.reports) {
        (Some(p), None) => {
            if shard != Shard::ALL {
                bail!("--shard applies to --reports, not to a single --prompt");
            }
            JobList::for_prompt(p, a.count, a.seed).context("--prompt, --count and --seed")?
        }
        (None, Some(csv)) => JobList::from_csv(csv, a.count, a.seed, shard).context("--reports, --count and --seed")?,
        _ => bail!("give --prompt \"…\" or --reports CSV"),
    };
    if a.noise.is_some() && jobs.len() != 1 {
        bail!("--noise reproduces one volume: use it with one prompt and --count 1");
    }
    let (mode, window, splits) = a.decode.parse()?;
    let cap = crate::util::max_memory(a.max_memory.as_deref())?;
    crate::util::output_dir(&a.out, "--out")?;
    eprintln!("loading {} …", model.display());
    let mut p = Pipeline::load(&model, &device).with_context(|| format!("loading the model in {}", model.display()))?;
    if let Some(precision) = precision {
        p.set_precision(precision);
    }
    let mut opts = p.default_options();
    if let Some(s) = a.steps {
        opts.steps = s;
    }
    if let Some(g) = a.guidance {
        opts.guidance = g;
    }
    if let Some(s) = &a.sampler {
        opts.sampler = s.parse().map_err(|e| anyhow::anyhow!("--sampler: {e}"))?;
    }
    opts.negative_prompt = a.negative_prompt.clone();
    opts.exact |= a.exact;
    if let Some(s) = &a.size {
        opts.size = parse_size(s)?;
    }
    opts.set_decode(mode, window, splits, p.card.decode.window, p.default_decode_splits())?;
    opts.validate()?;
    let latent = p.check_size(opts.size)?;
    let budget = text2ct_io::memory::budget(cap)?;
    if let (None, None, None, Some(b)) = (mode, window, splits, &budget) {
        if let Some(how) = text2ct_generate::memory::fit_decode(&p, &mut opts, b.bytes)? {
            eprintln!(
                "decoding as the model card says would not fit in {} ({}): decoding {how} instead",
                text2ct_io::memory::format_bytes(b.bytes),
                b.source
            );
        }
    }
    let mem = text2ct_generate::memory::check_fits_in(&p, &opts, budget).context("--size")?;
    let noise = match &a.noise {
        Some(path) => {
            let n = NpyArray::read(path)?;
            let want = vec![1, p.unet.config.in_channels, latent[0], latent[1], latent[2]];
            if n.shape != want {
                bail!("{}: noise has shape {:?}, expected {want:?}", path.display(), n.shape);
            }
            Some(Tensor::<5>::from_data(
                TensorData::new(n.data, [want[0], want[1], want[2], want[3], want[4]]),
                &device,
            ))
        }
        None => None,
    };
    eprintln!(
        "model {} ({}); sampler {} {} steps, guidance {}{}, output {:?} at {:?} mm; scale factor {} ({}); \
         {} convolutions; decode: {}; memory: about {} per volume (estimated)",
        p.card.name,
        p.card.trained_on,
        opts.sampler,
        opts.steps,
        opts.guidance,
        match &opts.negative_prompt {
            Some(n) => format!(" away from the negative prompt {n:?}"),
            None => String::new(),
        },
        opts.size,
        p.card.output.spacing,
        p.scale_factor,
        p.scale_factor_source,
        p.precision_in_effect(),
        p.describe_decode(&opts, latent),
        text2ct_io::memory::format_bytes(mem.peak())
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mp = MultiProgress::new();
    let style = |t: &str| ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar());
    let vols = mp.add(ProgressBar::new(jobs.len() as u64));
    vols.set_style(style("{msg:>8} [{bar:30.cyan/blue}] {pos}/{len} volumes (eta {eta})"));
    vols.set_message("generate");
    let steps = mp.add(ProgressBar::new(opts.steps as u64));
    steps.set_style(style("{msg:>8} [{bar:30.green/white}] step {pos}/{len} ({per_sec})"));
    steps.set_message("sampling");
    let (mut done, mut skipped) = (0, 0);
    let mut noise = noise;
    for job in jobs.iter() {
        if !a.overwrite && output::is_done(&a.out, &job) {
            // A job killed between the sidecar and the DICOM series gets its series now.
            if a.dicom && !a.out.join(format!("{}_dicom", job.stem())).is_dir() {
                let json = a.out.join(format!("{}.json", job.stem()));
                let text = std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
                let sc: output::Sidecar =
                    serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
                write_dicom(&a.out, &job, &sc)?;
            }
            skipped += 1;
            vols.inc(1);
            continue;
        }
        steps.reset();
        let sc = p.run_job(&job, &opts, &a.out, noise.take(), &mut |i, n| {
            steps.set_length(n as u64);
            steps.set_position(i as u64);
        })?;
        if a.dicom {
            write_dicom(&a.out, &job, &sc)?;
        }
        if sc.prompt_truncated {
            mp.suspend(|| {
                eprintln!(
                    "warning: the prompt of {} was longer than the model's {} tokens and was truncated",
                    job.id, p.card.tokenizer.max_length
                )
            });
        }
        if sc.negative_prompt_truncated {
            mp.suspend(|| {
                eprintln!(
                    "warning: the negative prompt was longer than the model's {} tokens and was truncated",
                    p.card.tokenizer.max_length
                )
            });
        }
        mp.suspend(|| {
            println!(
                "{} (seed {}): sampling {:.1} s, decoding {:.1} s",
                a.out.join(format!("{}.nii.gz", job.stem())).display(),
                job.seed,
                sc.timings_s.sampling,
                sc.timings_s.decoding
            )
        });
        done += 1;
        vols.inc(1);
    }
    steps.finish_and_clear();
    vols.finish_and_clear();
    println!("generated {done} volume(s), {skipped} already present, in {}", a.out.display());
    Ok(())
}

/// The DICOM series of one generated volume, from its NIfTI ([`output::write_dicom`]).
fn write_dicom(
    out: &std::path::Path,
    job: &text2ct_generate::Job,
    sc: &text2ct_generate::output::Sidecar,
) -> Result<()> {
    let stem = job.stem();
    let dir = out.join(format!("{stem}_dicom"));
    output::write_dicom(out, &stem, sc, &dir).with_context(|| format!("writing {}", dir.display()))
}
