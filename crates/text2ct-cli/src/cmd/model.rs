//! `text2ct model`: model cards.

use std::path::PathBuf;

use anyhow::Result;
use text2ct_generate::pipeline::Pipeline;
use text2ct_generate::ModelCard;
use text2ct_models::burn::tensor::Device;

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Write a model.json card into DIR for Text2CT's three released files
    /// (autoencoder_epoch273.pt, unet_rflow_200ep.pt, CLIP3D_Finding_Impression_30ep.pt), with
    /// the released inference settings (rectified flow, 30 steps, guidance 5, 512x512x128 output).
    InitRelease {
        /// The folder that holds (or will hold) the three downloaded files.
        dir: PathBuf,
        /// Overwrite an existing model.json.
        #[arg(long)]
        force: bool,
    },
    /// Check a model folder and print its card. Every file the card names must lie inside the
    /// folder; every weights file is read in full and checked against its network's config
    /// (missing, unexpected and mis-shaped tensors are listed); any mismatch exits 1.
    Show {
        /// A folder with a model.json card.
        dir: PathBuf,
    },
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::InitRelease { dir, force } => {
            let p = dir.join(ModelCard::FILE);
            if p.exists() && !force {
                anyhow::bail!("{} exists; pass --force to overwrite it", p.display());
            }
            let card = ModelCard::text2ct_release();
            card.save(&dir)?;
            println!("wrote {}", p.display());
            let missing: Vec<String> = card
                .files()
                .into_iter()
                .filter(|(_, f)| !dir.join(f).is_file())
                .map(|(w, f)| format!("{f} ({w})"))
                .collect();
            if missing.is_empty() {
                println!("all referenced files are present");
            } else {
                println!("still to download into {}: {}", dir.display(), missing.join(", "));
            }
            Ok(())
        }
        ModelCommand::Show { dir } => {
            let p = Pipeline::load(&dir, &Device::flex())?;
            println!("{}", serde_json::to_string_pretty(&p.card)?);
            eprintln!("checked {}: every file is inside the folder and every network loads strictly:", dir.display());
            for (what, f) in p.card.files() {
                let hash = p.weights_sha256.iter().find(|(g, _)| *g == f).map_or("", |(_, h)| h.as_str());
                eprintln!("  {what}: {f} (sha256 {hash})");
            }
            eprintln!("  scale factor {} ({})", p.scale_factor, p.scale_factor_source);
            Ok(())
        }
    }
}
