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
        .sample(noise.clone(), &ctx, &opts, &mut |i, total| {
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
