//! The default model, embedded in the binary: `models/phantom-default/` of the repository
//! (a VAE, a CLIP text encoder and a latent-diffusion U-Net, all small and trained by text2ct on
//! procedural phantom chest CTs: synthetic data, not patients). `text2ct generate` without
//! `--model` uses it, so a fresh machine generates without downloading anything.
//!
//! [`materialize`] writes the embedded files once into a cache folder named after their hash
//! (`$TEXT2CT_CACHE`, else `$XDG_CACHE_HOME/text2ct`, else `$HOME/.cache/text2ct`, else the
//! system temp folder) and returns it; later calls reuse it (the files are checked by size and
//! rewritten when they differ). Each file is written atomically.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::error::{GenerateError, Result};

/// Name of the embedded model (its folder in the repository).
pub const NAME: &str = "phantom-default";

macro_rules! file {
    ($name:literal) => {
        ($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/phantom-default/", $name)) as &[u8])
    };
}

/// The embedded files (name, bytes): everything `model.json` names, plus the card's README.
pub static FILES: &[(&str, &[u8])] = &[
    file!("model.json"),
    file!("unet.safetensors"),
    file!("unet_config.json"),
    file!("vae.safetensors"),
    file!("vae_config.json"),
    file!("text_encoder.safetensors"),
    file!("text_encoder_config.json"),
    file!("README.md"),
];

/// SHA-256 over the embedded files (names and bytes), hex.
pub fn hash() -> String {
    let mut h = Sha256::new();
    for (n, b) in FILES {
        h.update(n.as_bytes());
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    format!("{:x}", h.finalize())
}

fn cache_root() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = env("TEXT2CT_CACHE") {
        return p;
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return p.join("text2ct");
    }
    if let Some(p) = env("HOME") {
        return p.join(".cache").join("text2ct");
    }
    std::env::temp_dir().join("text2ct")
}

/// Write the embedded model into the cache (once) and return its folder.
pub fn materialize() -> Result<PathBuf> {
    let dir = cache_root().join("models").join(format!("{NAME}-{}", &hash()[..16]));
    std::fs::create_dir_all(&dir)
        .map_err(|e| GenerateError::Invalid(format!("cannot create the model cache {}: {e}", dir.display())))?;
    for (name, bytes) in FILES {
        let p = dir.join(name);
        let ok = std::fs::metadata(&p).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
        if !ok {
            text2ct_io::error::atomic_write_bytes(&p, bytes)
                .map_err(|e| GenerateError::Invalid(format!("writing the default model to {}: {e}", p.display())))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_model_materializes_and_loads() {
        let tmp = std::env::temp_dir().join(format!("text2ct-default-model-test-{}", std::process::id()));
        std::env::set_var("TEXT2CT_CACHE", &tmp);
        let dir = materialize().unwrap();
        assert!(dir.starts_with(&tmp));
        let card = crate::ModelCard::load(&dir).unwrap();
        card.validate(&dir).unwrap();
        // A second call reuses the folder; a damaged file is rewritten.
        std::fs::write(dir.join("unet_config.json"), b"{").unwrap();
        assert_eq!(materialize().unwrap(), dir);
        let want = FILES.iter().find(|(n, _)| *n == "unet_config.json").unwrap().1;
        assert_eq!(std::fs::read(dir.join("unet_config.json")).unwrap(), want);
        std::fs::remove_dir_all(&tmp).ok();
    }
}
