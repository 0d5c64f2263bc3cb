//! Hostile inputs, family `limits` (see main.rs): sizes, counts, seeds and non-finite numbers.

use std::path::{Path, PathBuf};

use text2ct_io::nifti_io::{write_nifti, DType, WriteOptions};
use text2ct_io::{Affine, Volume};
use text2ct_models::resnet2d::{ResNet2d, ResNet2dConfig};

use crate::{check_all, s, scratch, Case};

/// A float32 `.nii` of a smooth 16 x 16 x 8 volume (`k` varies it).
fn nifti_f32(path: &Path, k: f32) {
    let a = Affine::from_spacing_origin([1.0; 3], [0.0; 3]).unwrap();
    let v =
        Volume::from_fn([16, 16, 8], a, |x, y, z| (x as f32 * 40.0 + y as f32 * 10.0 + z as f32 * k) - 600.0).unwrap();
    write_nifti(path, &v, &WriteOptions { dtype: DType::F32, ..WriteOptions::ct_hu() }).unwrap();
}

/// Overwrite `bytes` at `offset` of a file.
fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

/// Two FID sets of two volumes each (`real`, `fake`), sets where one volume holds NaN / Inf
/// voxels, and a small random 2D ResNet with its config.
struct Fid {
    dir: PathBuf,
    real: PathBuf,
    fake: PathBuf,
    nan: PathBuf,
    inf: PathBuf,
    weights: PathBuf,
    config: PathBuf,
}

impl Fid {
    fn new(d: &Path) -> Fid {
        let (real, fake, nan, inf) = (d.join("real"), d.join("fake"), d.join("fake_nan"), d.join("fake_inf"));
        for (dir, k) in [(&real, 5.0), (&fake, 7.0), (&nan, 7.0), (&inf, 7.0)] {
            std::fs::create_dir_all(dir).unwrap();
            nifti_f32(&dir.join("a.nii"), k);
            nifti_f32(&dir.join("b.nii"), k + 1.0);
        }
        // float32 voxel (3, 0, 0) (the data start at vox_offset 352) becomes NaN.
        patch(&nan.join("b.nii"), 352 + 12, &f32::NAN.to_le_bytes());
        // scl_slope (offset 112) of 1e38 scales every voxel to ±Inf on read.
        patch(&inf.join("b.nii"), 112, &1e38f32.to_le_bytes());
        let cfg = ResNet2dConfig { widths: [8, 8, 16, 16], stem_width: 8, ..ResNet2dConfig::resnet18() };
        let (weights, config) = (d.join("r18.safetensors"), d.join("r18.json"));
        ResNet2d::random_state_dict(&cfg, 1).unwrap().write_safetensors(&weights, None).unwrap();
        std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
        Fid { dir: d.to_path_buf(), real, fake, nan, inf, weights, config }
    }

    /// `eval fid` of `real` against `fake` into `out` (default: a fresh folder), plus `extra`.
    fn case(&self, name: &str, fake: &Path, out: Option<&Path>, extra: &[&str]) -> Case {
        let out = out.map_or(self.dir.join(format!("fid-{name}")), Path::to_path_buf);
        let mut args: Vec<String> = ["eval", "fid", "--backbone", "resnet18-2d"].map(String::from).to_vec();
        for (k, v) in [
            ("--real", &self.real),
            ("--fake", &fake.to_path_buf()),
            ("--weights", &self.weights),
            ("--backbone-config", &self.config),
            ("--out", &out),
        ] {
            args.extend([k.to_string(), s(v)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Case::new(format!("fid-{name}"), &a)
    }
}

/// `generate` with the embedded default model, small and fast, into `out`, with `extra`
/// replacing the defaults it names (clap refuses repeated options).
fn generate(name: &str, out: &Path, extra: &[&str]) -> Case {
    let o = s(out);
    let base = [("--prompt", "Findings: normal."), ("--steps", "1"), ("--size", "32,32,16"), ("--out", o.as_str())];
    let mut args: Vec<&str> = vec!["generate"];
    for (k, v) in base {
        if !extra.contains(&k) {
            args.extend_from_slice(&[k, v]);
        }
    }
    args.extend_from_slice(extra);
    Case::new(name, &args)
}

/// Item 3: volumes with NaN / Inf voxels are refused by name, not scored.
fn non_finite_volumes(f: &Fid) -> Vec<Case> {
    vec![
        // A generated volume with a NaN voxel.
        f.case("nan-voxel", &f.nan, None, &[])
            .writes_nothing_at(f.dir.join("fid-nan-voxel"))
            .mentions("b.nii")
            .mentions("non-finite"),
        // A header scaling that overflows every voxel to Inf.
        f.case("inf-voxel", &f.inf, None, &[])
            .writes_nothing_at(f.dir.join("fid-inf-voxel"))
            .mentions("b.nii")
            .mentions("non-finite"),
    ]
}

/// Item 9: headers reported as the file has them; output folders checked before any work.
fn messages(d: &Path, f: &Fid) -> Vec<Case> {
    let file = d.join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // NIfTI headers: dim[0] = 9, and a negative dimension.
    let hdr = |name: &str, offset: usize, v: i16| {
        let p = d.join(name);
        nifti_f32(&p, 1.0);
        patch(&p, offset, &v.to_le_bytes());
        p
    };
    let dim0 = hdr("dim0.nii", 40, 9);
    let negdim = hdr("negdim.nii", 44, -1);
    let mut cases = vec![
        Case::new("nifti-dim0-9", &["inspect", &s(&dim0)]).mentions("dim0.nii").mentions("dim[0] = 9 "),
        Case::new("nifti-negative-dim", &["inspect", &s(&negdim)])
            .mentions("negdim.nii")
            .mentions("negative dimension"),
        // Output folders that are files, or inside one: refused before any work, in words.
        generate("out-is-file", &file, &[]).mentions("--out").mentions("is a file, not a folder"),
        generate("out-under-file", &file.join("sub"), &[]).mentions("--out").mentions("is a file"),
        f.case("out-is-file", &f.fake, Some(&file), &[]).mentions("--out").mentions("is a file"),
        Case::new("phantom-out-under-file", &["phantom", "--out", &s(&file.join("p")), "--count", "1"])
            .mentions("--out")
            .mentions("is a file"),
    ];
    // An output folder nobody may write in (procfs refuses even root).
    if Path::new("/proc/self").is_dir() {
        cases.push(generate("out-unwritable", Path::new("/proc/self/text2ct-out"), &[]).mentions("cannot write"));
        cases.push(generate("out-unwritable-existing", Path::new("/proc/self"), &[]).mentions("cannot write"));
    }
    cases
}

pub fn cases() -> Vec<Case> {
    let d = scratch("limits");
    let f = Fid::new(&d);
    let mut cases = vec![
        // No volumes to make.
        Case::new("phantom-count-0", &["phantom", "--out", &s(&d.join("p")), "--count", "0"])
            .mentions("count")
            .writes_nothing_at(d.join("p")),
    ];
    cases.extend(non_finite_volumes(&f));
    cases.extend(messages(&d, &f));
    cases
}

#[test]
fn hostile_limits() {
    check_all("limits", cases());
}
