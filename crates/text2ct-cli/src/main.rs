//! `text2ct`: text-to-CT generation, training and evaluation (command line).

use clap::{Parser, Subcommand};

mod cmd;
mod util;

/// text2ct: generate 3D chest CT volumes from radiology-report text, train the models that do
/// it, and evaluate them. Runs on CPU with no downloads: the embedded default data are procedural
/// chest-CT *phantoms*, not patients.
#[derive(Parser)]
#[command(name = "text2ct", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate CT volumes from report text (one prompt or a reports CSV; sharding for array
    /// jobs; NIfTI int16 HU + PNG preview + JSON sidecar per volume, seed in the names).
    Generate(cmd::generate::GenerateArgs),
    /// Run the end-to-end demo on the embedded default: make a small phantom data set, prepare
    /// it as CT-RATE is prepared, and write previews.
    Demo(cmd::demo::DemoArgs),
    /// Evaluate: FID (2.5D / 3D), the 3D-CLIP protocol, the guidance sweep, and the one-command
    /// report of every configured table.
    #[command(subcommand)]
    Eval(cmd::eval::EvalCommand),
    /// Write a procedural chest-CT phantom data set (volumes, reports, the 18 CT-RATE labels,
    /// metadata) in CT-RATE's own layout.
    Phantom(cmd::phantom::PhantomArgs),
    /// Preprocess a data set into memory-mappable volumes and one manifest.
    #[command(subcommand)]
    Prepare(cmd::prepare::PrepareCommand),
    /// Draw axial, coronal and sagittal mid-slices of a volume side by side into a PNG.
    Preview(cmd::preview::PreviewArgs),
    /// A 3D rendering of a volume as a PNG: maximum-intensity projection or volume rendering
    /// (CT transfer function), one view or a turntable of N views.
    Render(cmd::render::RenderArgs),
    /// Print a volume's header, geometry, orientation and HU statistics.
    Inspect(cmd::inspect::InspectArgs),
    /// Model cards: write one for Text2CT's released weights, or check a model folder.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
    /// A local web app: generate from a prompt box with live progress, view volumes in three
    /// planes and 3D (NiiVue), compare two side by side, download NIfTI / DICOM / PNG, open your
    /// own CTs from --data-root; a JSON API for scripts (docs/serve.md).
    Serve(cmd::serve::ServeArgs),
    /// Print a sampler's timesteps and step sizes as JSON (rflow as released, ddpm, ddim).
    Schedule(cmd::schedule::ScheduleArgs),
    /// The MAISI 3D VAE: encode volumes to latents, decode latents to volumes, convert weights.
    Vae(cmd::vae::VaeArgs),
    /// Text2CT's 3D CLIP: embed report texts (what conditions the U-Net) or CT volumes.
    Clip(cmd::clip::ClipArgs),
    /// Embed report texts with either text encoder that can condition the U-Net: Text2CT's 3D CLIP or
    /// MiniLM (the CLIP ablation).
    Text(cmd::text::TextArgs),
    /// The latent diffusion U-Net (MONAI DiffusionModelUNetMaisi): one forward pass on .npy inputs.
    Unet(cmd::unet::UnetArgs),
    /// Time the real workload phase by phase, with peak memory: U-Net forwards, VAE encode and
    /// decode, one whole generated volume (default: the released architecture, random weights).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Check a compute device (e.g. a GPU backend) against the CPU backend, op by op, at growing sizes.
    DeviceCheck(cmd::device::DeviceCheckArgs),
    /// Train a model from a TOML config (`text2ct train vae --config configs/train_vae_phantom.toml`).
    #[command(subcommand)]
    Train(cmd::train::TrainCommand),
}

fn main() {
    // Behave like other command-line tools when the reader of stdout goes away (`| head`):
    // end quietly instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Phantom(a) => cmd::phantom::run(a),
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::Preview(a) => cmd::preview::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Render(a) => cmd::render::run(a),
        Command::Schedule(a) => cmd::schedule::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Vae(a) => cmd::vae::run(a),
        Command::Clip(a) => cmd::clip::run(a),
        Command::Text(a) => cmd::text::run(a),
        Command::Unet(a) => cmd::unet::run(a),
        Command::Train(c) => cmd::train::run(c),
        Command::DeviceCheck(a) => cmd::device::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
