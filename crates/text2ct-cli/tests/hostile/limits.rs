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

/// The `unet forward` fixtures of text2ct-models (a small MONAI U-Net, batch 2).
fn unet_fixture(f: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-models/fixtures/unet_small");
    s(&root.join(f))
}

/// `unet forward` on the fixtures with `over` replacing options.
fn unet_forward(name: &str, out: &Path, over: &[(&str, String)]) -> Case {
    let mut opts: Vec<(&str, String)> = ["config.json", "unet.pt", "x.npy", "t.npy", "context.npy", "spacing.npy"]
        .iter()
        .zip(["--config", "--weights", "--x", "--t", "--context", "--spacing"])
        .map(|(f, o)| (o, unet_fixture(f)))
        .collect();
    opts.push(("--class-labels", unet_fixture("class_labels.npy")));
    for (k, v) in over {
        opts.retain(|(o, _)| o != k);
        opts.push((k, v.clone()));
    }
    let mut args = vec!["unet".to_string(), "forward".into(), "--output".into(), s(out)];
    for (k, v) in opts {
        args.push(k.into());
        args.push(v);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Case::new(name, &a).writes_nothing_at(out)
}

/// A float32 `.npy` of `shape` (C order).
fn npy(path: &Path, shape: &[usize], data: Vec<f32>) -> String {
    text2ct_io::npy::write_npy_f32(path, shape, &data).unwrap();
    s(path)
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

/// `generate` into a fresh folder under `d` that must stay absent.
fn gen(d: &Path, name: &str, extra: &[&str]) -> Case {
    let out = d.join(format!("gen-{name}"));
    generate(name, &out, extra).writes_nothing_at(out)
}

/// Item 5: guidance scales, seeds and U-Net inputs out of range.
fn inputs(d: &Path) -> Vec<Case> {
    let u = |name: &str| d.join(format!("unet-{name}.npy"));
    // U-Net inputs with one bad value each (the fixtures: x [2, 4, 16, 8, 16], t [2], spacing [2, 3]).
    let t_nan = npy(&d.join("t_nan.npy"), &[2], vec![f32::NAN, 37.25]);
    let t_big = npy(&d.join("t_big.npy"), &[2], vec![999.5, 1e9]);
    let sp_nan = npy(&d.join("sp_nan.npy"), &[2, 3], vec![75.0, f32::NAN, 300.0, 80.0, 70.0, 150.0]);
    let sp_neg = npy(&d.join("sp_neg.npy"), &[2, 3], vec![75.0, 75.0, -300.0, 80.0, 70.0, 150.0]);
    let xa = text2ct_io::npy::NpyArray::read(Path::new(&unet_fixture("x.npy"))).unwrap();
    let mut xv = xa.data.clone();
    xv[17] = f32::INFINITY;
    let x_inf = npy(&d.join("x_inf.npy"), &xa.shape, xv);
    vec![
        // A guidance scale that saturates every volume, or is not a number.
        gen(d, "guidance-1e30", &["--guidance", "1e30"]).mentions("--guidance"),
        gen(d, "guidance-nan", &["--guidance", "NaN"]).mentions("--guidance"),
        gen(d, "guidance-neg", &["--guidance=-500"]).mentions("--guidance"),
        // Seeds past u64::MAX (the second volume's seed wrapped to 0).
        gen(d, "seed-wraps", &["--seed", "18446744073709551615", "--count", "2"])
            .mentions("--seed")
            .mentions("largest seed"),
        // unet forward: NaN or out-of-range inputs gave all-NaN output with exit 0.
        unet_forward("unet-t-nan", &u("tnan"), &[("--t", t_nan)]).mentions("t_nan.npy").mentions("--t"),
        unet_forward("unet-t-range", &u("tbig"), &[("--t", t_big)]).mentions("t_big.npy").mentions("1000"),
        unet_forward("unet-spacing-nan", &u("spnan"), &[("--spacing", sp_nan)]).mentions("sp_nan.npy"),
        unet_forward("unet-spacing-neg", &u("spneg"), &[("--spacing", sp_neg)]).mentions("positive"),
        unet_forward("unet-x-inf", &u("xinf"), &[("--x", x_inf)]).mentions("x_inf.npy").mentions("non-finite"),
    ]
}

/// Item 7: sizes whose memory cannot exist, counts that would not end.
fn generation_limits(d: &Path) -> Vec<Case> {
    vec![
        gen(d, "size-100000", &["--size", "100000,100000,100000"]).mentions("--size").mentions("memory"),
        gen(d, "size-1024", &["--size", "1024,1024,1024"])
            .env("TEXT2CT_MEMORY_LIMIT", "16G")
            .mentions("--size")
            .mentions("estimated"),
        gen(d, "size-over-limit", &["--size", "256,256,128"])
            .env("TEXT2CT_MEMORY_LIMIT", "256M")
            .mentions("TEXT2CT_MEMORY_LIMIT")
            .mentions("decode-window"),
        gen(d, "count-1e9", &["--count", "1000000000"]).mentions("--count"),
        gen(d, "count-u64-max", &["--count", "18446744073709551615"]).mentions("--count"),
        gen(d, "memory-limit-junk", &[]).env("TEXT2CT_MEMORY_LIMIT", "lots").mentions("TEXT2CT_MEMORY_LIMIT"),
    ]
}

/// Item 8: an FID grid of 16 GiB per copy.
fn fid_limits(f: &Fid) -> Vec<Case> {
    vec![f
        .case("size-huge", &f.fake, None, &["--size", "2048,2048,1024"])
        .writes_nothing_at(f.dir.join("fid-size-huge"))
        .mentions("--size")
        .mentions("estimated")]
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
    cases.extend(inputs(&d));
    cases.extend(generation_limits(&d));
    cases.extend(fid_limits(&f));
    cases
}

#[test]
fn hostile_limits() {
    check_all("limits", cases());
}
