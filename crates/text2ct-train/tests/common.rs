//! Shared test helpers: a tiny prepared data set and tiny configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Write an int16 Fortran-order `.npy` (what `prepare` writes).
pub fn write_i16_npy(path: &Path, dims: [usize; 3], data: &[i16]) {
    let mut header =
        format!("{{'descr': '<i2', 'fortran_order': True, 'shape': ({}, {}, {}), }}", dims[0], dims[1], dims[2]);
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// A prepared data set of `n` volumes of `dims` in `dir`: smooth bright blobs on air, a
/// trivially learnable distribution. Returns the manifest path.
pub fn tiny_dataset(dir: &Path, n: usize, dims: [usize; 3], seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let mut lines = String::new();
    for i in 0..n {
        let [nx, ny, nz] = dims;
        let c = [
            nx as f64 * (0.35 + 0.3 * (((i as u64 * 7 + seed) % 5) as f64 / 4.0)),
            ny as f64 * (0.35 + 0.3 * (((i as u64 * 3 + seed) % 4) as f64 / 3.0)),
            nz as f64 * 0.5,
        ];
        let r = nx.min(ny) as f64 * 0.3;
        let mut data = vec![0i16; nx * ny * nz];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let d = ((x as f64 - c[0]).powi(2) + (y as f64 - c[1]).powi(2) + (2.0 * (z as f64 - c[2])).powi(2))
                        .sqrt();
                    let v = 1.0 / (1.0 + ((d - r) / 1.5).exp());
                    data[x + nx * (y + ny * z)] = (-1000.0 + 1100.0 * v) as i16;
                }
            }
        }
        let id = format!("vol_{i}");
        write_i16_npy(&dir.join(format!("volumes/{id}.npy")), dims, &data);
        let entry = serde_json::json!({
            "id": id, "volume": format!("volumes/{id}.npy"), "report": "", "labels": vec![0u8; 18],
            "spacing": [2.0, 2.0, 4.0], "dims": dims,
            "affine": [[-2.0, 0.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            "source": "test", "hu": "as_is"
        });
        lines.push_str(&entry.to_string());
        lines.push('\n');
    }
    let m = dir.join("manifest.jsonl");
    std::fs::write(&m, lines).unwrap();
    m
}

/// A tiny VAE training config (channels [4, 8, 8], groups 4).
pub fn tiny_config(train: &Path, val: Option<&Path>, out: &Path, steps: usize) -> String {
    let val = val.map(|v| format!("val_manifest = {:?}\n", v.to_string_lossy())).unwrap_or_default();
    format!(
        r#"
[model]
spatial_dims = 3
in_channels = 1
out_channels = 1
latent_channels = 2
num_channels = [4, 8, 8]
num_res_blocks = [1, 1, 1]
norm_num_groups = 4
attention_levels = [false, false, false]

[data]
train_manifest = {train:?}
{val}batch_size = 1

[optim]
lr = 3e-3

[loss]
perceptual_weight = 0.1
adv_weight = 0.0

[run]
out_dir = {out:?}
steps = {steps}
checkpoint_every = 0
"#,
        train = train.to_string_lossy(),
        out = out.to_string_lossy(),
    )
}
