//! What generation writes per volume, atomically:
//! `{id}_seed{S}.nii.gz` (int16 HU, true spacing, qform + sform, orientation, seed in `descrip`),
//! `{id}_seed{S}.png` (3-plane preview, lung and mediastinal windows) and `{id}_seed{S}.json`
//! (the sidecar: prompt, seed, sampler, guidance, model and weight hashes, timings). The
//! sidecar is written last, so a folder can be resumed by skipping jobs whose sidecar exists.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use text2ct_io::nifti_io::{write_nifti, WriteOptions};
use text2ct_io::preview::{render_planes, save_png, stack_horizontal, Window};
use text2ct_io::Volume;
use text2ct_models::Precision;

use crate::error::{GenerateError, Result};
use crate::prompts::Job;

/// The JSON sidecar of one generated volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    pub id: String,
    pub prompt: String,
    /// Whether the prompt was cut to the tokenizer's maximum length.
    pub prompt_truncated: bool,
    /// The negative prompt guidance steered away from (absent: the zero context, as released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Whether the negative prompt was cut to the tokenizer's maximum length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negative_prompt_truncated: bool,
    pub seed: u64,
    pub sampler: text2ct_diffusion::Sampler,
    pub exact: bool,
    pub steps: usize,
    pub guidance: f32,
    pub scale_factor: f64,
    pub model: String,
    /// SHA-256 over the card and the weight hashes.
    pub model_hash: String,
    pub weights_sha256: Vec<(String, String)>,
    pub size: [usize; 3],
    pub spacing: [f64; 3],
    pub orientation: String,
    pub files: Vec<String>,
    pub timings_s: Timings,
    /// How the VAE decoded the latent: `sliding window [x, y, z] latent voxels, overlap 0.4`,
    /// `one pass` or `one pass in N slabs along x`. Empty in sidecars from before it was recorded.
    #[serde(default)]
    pub decode: String,
    /// The compute device the volume was generated on (burn's name for it; results on different
    /// devices agree to float rounding, not bit for bit). Empty in sidecars from before 0.1.
    #[serde(default)]
    pub device: String,
    /// The arithmetic of the 3x3x3 convolutions as run: `f32`, or `bf16` (bf16 products summed in
    /// f32). `f32` in sidecars from before it was recorded.
    #[serde(default)]
    pub precision: Precision,
    pub text2ct_version: String,
    pub note: String,
}

/// Seconds spent per stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub text: f64,
    pub sampling: f64,
    pub decoding: f64,
    pub writing: f64,
}

/// Paths of a job's outputs.
pub fn output_paths(dir: &Path, job: &Job) -> (PathBuf, PathBuf, PathBuf) {
    let stem = job.stem();
    (dir.join(format!("{stem}.nii.gz")), dir.join(format!("{stem}.png")), dir.join(format!("{stem}.json")))
}

/// True when the job's sidecar exists (written last): the job is done.
pub fn is_done(dir: &Path, job: &Job) -> bool {
    output_paths(dir, job).2.is_file()
}

/// Write the volume (HU), its preview and the sidecar.
pub fn write_outputs(dir: &Path, job: &Job, volume: &Volume, sidecar: &mut Sidecar) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (nii, png, json) = output_paths(dir, job);
    let descrip =
        format!("text2ct seed={} w={} steps={} {}", sidecar.seed, sidecar.guidance, sidecar.steps, sidecar.sampler);
    write_nifti(&nii, volume, &WriteOptions::ct_hu().with_descrip(descrip))?;
    write_preview(volume, &png)?;
    sidecar.files =
        [&nii, &png, &json].iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    sidecar.timings_s.writing = t0.elapsed().as_secs_f64();
    let bytes = serde_json::to_vec_pretty(sidecar).map_err(|e| GenerateError::Invalid(e.to_string()))?;
    text2ct_io::error::atomic_write_bytes(&json, &bytes)?;
    Ok(())
}

/// Write the DICOM CT series of the generated volume `{dir}/{stem}.nii.gz` (exactly the int16 HU
/// written) into `dest` (replaced if it exists), marked SYNTHETIC in PatientName, ImageType and
/// ImageComments (which hold the prompt and seed), with UIDs derived from the model hash and stem.
/// `generate --dicom` and `serve`'s `dicom.zip` both write through it.
pub fn write_dicom(dir: &Path, stem: &str, sc: &Sidecar, dest: &Path) -> Result<()> {
    use text2ct_io::dicom_write::{write_dicom_series, DicomSeriesInfo};
    let nii = dir.join(format!("{stem}.nii.gz"));
    let (vol, _) = text2ct_io::nifti_io::read_nifti(&nii, &text2ct_io::error::Limits::default())?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| text2ct_io::IoError::os(dest, e))?;
    }
    let info = DicomSeriesInfo {
        series_description: format!("SYNTHETIC text2ct {} seed {}", sc.model, sc.seed),
        image_comments: format!(
            "SYNTHETIC CT generated by text2ct from report text; not a patient. Model {} ({}), seed {}, {} {} steps, guidance {}. Prompt: {}",
            sc.model, sc.model_hash, sc.seed, sc.sampler, sc.steps, sc.guidance, sc.prompt
        ),
        patient_id: format!("SYNTH-{stem}"),
        uid_key: format!("{}/{stem}", sc.model_hash),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    write_dicom_series(&vol, dest, &info)?;
    Ok(())
}

/// The preview PNG of a volume: the three mid-planes in the lung window, then in the mediastinal
/// window (what `generate` writes beside each volume; `serve` writes it for opened volumes too).
pub fn write_preview(volume: &Volume, png: &Path) -> Result<()> {
    let lung = render_planes(volume, Window::LUNG, None)?;
    let med = render_planes(volume, Window::MEDIASTINUM, None)?;
    save_png(&stack_horizontal(&[lung, med], 8), png)?;
    Ok(())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| text2ct_io::IoError::os(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| text2ct_io::IoError::os(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of bytes, hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use text2ct_io::nifti_io::read_nifti;
    use text2ct_io::{Affine, Limits};

    #[test]
    fn outputs_carry_seed_geometry_and_sidecar() {
        let d = std::env::temp_dir().join(format!("text2ct-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let job =
            Job { id: "valid_1_a_1".into(), prompt: "Findings: x Impression: y".into(), row: 0, sample: 0, seed: 42 };
        let a = Affine::from_spacing_origin([0.75, 0.75, 3.0], [0.0; 3]).unwrap();
        let vol = Volume::from_fn([16, 12, 8], a, |x, _, _| x as f32 * 100.0 - 1000.0).unwrap();
        let mut sc = Sidecar {
            id: job.id.clone(),
            prompt: job.prompt.clone(),
            prompt_truncated: false,
            negative_prompt: None,
            negative_prompt_truncated: false,
            seed: 42,
            sampler: text2ct_diffusion::Sampler::Rflow,
            exact: false,
            steps: 30,
            guidance: 5.0,
            scale_factor: 1.0287,
            model: "test".into(),
            model_hash: sha256_bytes(b"card"),
            weights_sha256: vec![],
            size: vol.dims(),
            spacing: vol.spacing(),
            orientation: vol.orientation(),
            files: vec![],
            timings_s: Timings::default(),
            decode: "one pass".into(),
            device: "cpu".into(),
            precision: Precision::Bf16,
            text2ct_version: "0".into(),
            note: String::new(),
        };
        assert!(!is_done(&d, &job));
        write_outputs(&d, &job, &vol, &mut sc).unwrap();
        assert!(is_done(&d, &job));
        let (nii, png, json) = output_paths(&d, &job);
        assert!(nii.ends_with("valid_1_a_1_seed42.nii.gz"));
        let (back, info) = read_nifti(&nii, &Limits::default()).unwrap();
        assert_eq!(back.data(), vol.data());
        assert_eq!(back.spacing(), [0.75, 0.75, 3.0]);
        assert!(info.descrip.contains("seed=42"));
        assert_eq!((info.qform_code, info.sform_code), (1, 1));
        assert!(png.is_file());
        let sc2: Sidecar = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        assert_eq!(sc2.files.len(), 3);
        assert_eq!(sc2.seed, 42);
        assert_eq!(sc2.precision, Precision::Bf16);
        // A sidecar written before the precision was recorded reads as f32.
        let mut old: serde_json::Value = serde_json::to_value(&sc2).unwrap();
        old.as_object_mut().unwrap().remove("precision");
        assert_eq!(serde_json::from_value::<Sidecar>(old).unwrap().precision, Precision::F32);
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
