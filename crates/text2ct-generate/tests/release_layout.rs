//! The whole pipeline against Text2CT's inference algorithm run with MONAI/transformers on a tiny
//! model folder in the *released* layout (fixtures/gen_release_layout.py): bare U-Net state dict
//! (fallback scale factor 1.0287), `model.`-prefixed CLIP3D checkpoint in float16 with vision keys
//! to skip, MONAI VAE state dict.

use std::path::{Path, PathBuf};

use text2ct_generate::pipeline::Pipeline;
use text2ct_generate::prompts::Job;
use text2ct_models::burn::prelude::{Device, Tensor, TensorData};
use text2ct_models::NpyArray;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release_tiny")
}

fn npy(name: &str) -> NpyArray {
    NpyArray::read(&dir().join(name)).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn released_layout_reproduces_the_reference_inference() {
    let dev = Device::flex();
    let p = Pipeline::load(&dir(), &dev).unwrap();
    assert_eq!(p.scale_factor, 1.0287);
    assert!(p.scale_factor_source.starts_with("fallback"));
    let opts = p.default_options();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("meta.json")).unwrap()).unwrap();
    let prompt = meta["prompt"].as_str().unwrap();

    let n = npy("noise.npy");
    let noise: Tensor<5> = Tensor::from_data(TensorData::new(n.data.clone(), [1, 4, 8, 8, 4]), &dev);
    let (ctx, truncated) = p.encode_prompt(prompt).unwrap();
    assert!(!truncated);
    let mut steps = 0;
    let z = p
        .sample(noise.clone(), &ctx, &opts, 0, &mut |i, total| {
            assert_eq!(total, 5);
            steps = i;
        })
        .unwrap();
    assert_eq!(steps, 5);
    let zl = z.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let err = rel_l2(&zl, &npy("expected_latent.npy").data);
    assert!(err < 1e-4, "latent relative L2 error {err}");

    let vol = p.decode(z, opts.size).unwrap();
    assert_eq!(vol.dims(), [32, 32, 16]);
    assert_eq!(vol.spacing(), [0.75, 0.75, 3.0]);
    assert_eq!(vol.orientation(), "RAS");
    // Reference HU is [X, Y, Z] in C order; ours is x fastest.
    let want = npy("expected_hu.npy");
    let mut worst = 0.0f32;
    let mut off = 0usize;
    for x in 0..32 {
        for y in 0..32 {
            for zz in 0..16 {
                let d = (vol.get(x, y, zz) - want.data[(x * 32 + y) * 16 + zz]).abs();
                worst = worst.max(d);
                off += (d > 0.0) as usize;
            }
        }
    }
    // Truncation to int16 can flip by 1 HU where the float value sits on an integer.
    assert!(worst <= 1.0, "max HU difference {worst}");
    assert!(off < 32 * 32 * 16 / 100, "{off} voxels differ by 1 HU");

    // run_job writes the files with the seed in names and metadata.
    let out = std::env::temp_dir().join(format!("text2ct-gen-{}", std::process::id()));
    let job = Job { id: "prompt".into(), prompt: prompt.into(), row: 0, sample: 0, seed: 7 };
    let sc = p.run_job(&job, &opts, &out, Some(noise), &mut |_, _| {}).unwrap();
    assert_eq!(sc.seed, 7);
    assert!(out.join("prompt_seed7.nii.gz").is_file() && out.join("prompt_seed7.png").is_file());
    assert_eq!(sc.weights_sha256.len(), 3);
}

#[test]
fn seeds_are_reproducible_and_distinct() {
    let dev = Device::flex();
    let p = Pipeline::load(&dir(), &dev).unwrap();
    let a = p.noise([8, 8, 4], 1).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let b = p.noise([8, 8, 4], 1).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let c = p.noise([8, 8, 4], 2).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
    assert!(mean.abs() < 0.15 && (var - 1.0).abs() < 0.2, "{mean} {var}");
    assert!(p.check_size([30, 32, 16]).is_err());
    assert!(p.encode_prompt("   ").is_err());
}

#[test]
fn a_negative_prompt_replaces_the_zero_context_of_guidance() {
    let dev = Device::flex();
    let p = Pipeline::load(&dir(), &dev).unwrap();
    let n = npy("noise.npy");
    let noise: Tensor<5> = Tensor::from_data(TensorData::new(n.data.clone(), [1, 4, 8, 8, 4]), &dev);
    let (ctx, _) = p.encode_prompt("Findings: Right pleural effusion. Impression: Right pleural effusion.").unwrap();
    let (neg, _) = p.encode_prompt("Findings: Left pleural effusion. Impression: Left pleural effusion.").unwrap();
    let vec = |z: Tensor<5>| z.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let run = |w: f32, steps: usize, uncond: Option<&Tensor<3>>| {
        let mut o = p.default_options();
        o.guidance = w;
        o.steps = steps;
        vec(p.sample_with_uncond(noise.clone(), &ctx, uncond, &o, 0, &mut |_, _| {}).unwrap())
    };
    // One rectified-flow step is linear in v: with the negative context, w = 5 must be
    // z(w=0) + 5 (z(w=1) - z(w=0)), where w = 0 runs the negative branch alone.
    let (z0, z1, z5) = (run(0.0, 1, Some(&neg)), run(1.0, 1, Some(&neg)), run(5.0, 1, Some(&neg)));
    let want: Vec<f32> = z0.iter().zip(&z1).map(|(a, b)| a + 5.0 * (b - a)).collect();
    assert!(rel_l2(&z5, &want) < 1e-5, "{}", rel_l2(&z5, &want));
    // ... and differs from guidance away from the zero context.
    let zero5 = run(5.0, 1, None);
    assert!(rel_l2(&z5, &zero5) > 1e-3, "{}", rel_l2(&z5, &zero5));
    assert!(rel_l2(&run(0.0, 1, None), &z0) > 1e-3, "w = 0 is the negative prompt's branch, not the zero context's");
    // The prompt as its own negative prompt: guidance has nothing to push, any w gives w = 1.
    let same = run(5.0, 3, Some(&ctx));
    assert!(rel_l2(&same, &run(1.0, 3, None)) < 1e-5);

    // Through generate_volume / run_job: recorded in the sidecar; an empty one is refused.
    let mut o = p.default_options();
    o.steps = 2;
    o.negative_prompt = Some("Findings: Left pleural effusion.".into());
    let out = std::env::temp_dir().join(format!("text2ct-neg-{}", std::process::id()));
    let job = Job { id: "neg".into(), prompt: "Findings: Right pleural effusion.".into(), row: 0, sample: 0, seed: 3 };
    let sc = p.run_job(&job, &o, &out, None, &mut |_, _| {}).unwrap();
    assert_eq!(sc.negative_prompt.as_deref(), Some("Findings: Left pleural effusion."));
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("neg_seed3.json")).unwrap()).unwrap();
    assert_eq!(side["negative_prompt"], "Findings: Left pleural effusion.");
    // Without one, the sidecar is as before (no negative-prompt fields).
    o.negative_prompt = None;
    let job0 = Job { id: "pos".into(), ..job };
    p.run_job(&job0, &o, &out, None, &mut |_, _| {}).unwrap();
    let side0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("pos_seed3.json")).unwrap()).unwrap();
    assert!(side0.get("negative_prompt").is_none() && side0.get("negative_prompt_truncated").is_none());
    o.negative_prompt = Some("  ".into());
    let err = p.generate_volume("Findings: x.", 0, None, &o, &mut |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("negative prompt is empty"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn ddpm_step_noise_follows_the_job_seed() {
    // The same initial noise, two job seeds: DDPM's per-step noise must come from the seed (the
    // same seed reproduces bit for bit, another seed gives another volume); rflow and DDIM are
    // deterministic given the initial noise.
    let dev = Device::flex();
    let p = Pipeline::load(&dir(), &dev).unwrap();
    let n = npy("noise.npy");
    let noise: Tensor<5> = Tensor::from_data(TensorData::new(n.data.clone(), [1, 4, 8, 8, 4]), &dev);
    let prompt = "Findings: Right pleural effusion.";
    let run = |sampler: &str, seed: u64| {
        let mut o = p.default_options();
        o.sampler = sampler.parse().unwrap();
        o.steps = 3;
        p.generate_volume(prompt, seed, Some(noise.clone()), &o, &mut |_, _| {}).unwrap().volume.into_data()
    };
    let (a, b, c) = (run("ddpm", 1), run("ddpm", 1), run("ddpm", 2));
    assert_eq!(a, b, "the same seed reproduces DDPM exactly");
    let differ = a.iter().zip(&c).filter(|(x, y)| x != y).count();
    assert!(differ > a.len() / 10, "seeds 1 and 2 give the same DDPM volume ({differ} voxels differ)");
    for s in ["rflow", "ddim"] {
        assert_eq!(run(s, 1), run(s, 2), "{s} depends only on the initial noise");
    }
}

/// The card's `precision` is the pipeline's default (absent: f32), `set_precision` overrides it,
/// and the sidecar records what ran (bf16 only where the CPU has AVX512-BF16).
#[test]
fn card_precision_is_the_default_and_recorded() {
    use text2ct_models::Precision;
    let dev = Device::flex();
    let d = std::env::temp_dir().join(format!("text2ct-gen-precision-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    assert_eq!(Pipeline::load(&d, &dev).unwrap().precision(), Precision::F32);
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("model.json")).unwrap()).unwrap();
    card["precision"] = "bf16".into();
    std::fs::write(d.join("model.json"), card.to_string()).unwrap();
    let mut p = Pipeline::load(&d, &dev).unwrap();
    assert_eq!(
        (p.precision(), p.unet.precision(), p.vae.precision()),
        (Precision::Bf16, Precision::Bf16, Precision::Bf16)
    );
    let mut opts = p.default_options();
    opts.steps = 1;
    let job = Job { id: "prompt".into(), prompt: "Findings: Normal lungs.".into(), row: 0, sample: 0, seed: 1 };
    let sc = p.run_job(&job, &opts, &d.join("out"), None, &mut |_, _| {}).unwrap();
    assert_eq!(sc.precision, Precision::Bf16.on_this_cpu());
    p.set_precision(Precision::F32);
    assert_eq!((p.unet.precision(), p.vae.precision()), (Precision::F32, Precision::F32));
    std::fs::remove_dir_all(&d).ok();
}
