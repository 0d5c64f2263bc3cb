//! Write PNG previews (axial slices, coronal and sagittal planes) of one phantom, with its
//! parameters and report, for visual inspection:
//! `cargo run --release -p text2ct-phantom --example phantom_preview -- OUT_DIR [index] [labels|default] [nx ny nz]`
use text2ct_phantom::{generate_scan, PhantomConfig};

fn win(v: f32, lo: f32, hi: f32) -> u8 {
    (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).map(String::as_str).unwrap_or("/tmp/phantom_preview"));
    let index: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let dims = if args.len() >= 7 {
        [args[4].parse().unwrap(), args[5].parse().unwrap(), args[6].parse().unwrap()]
    } else {
        [128, 128, 64]
    };
    let mut cfg = PhantomConfig::with_dims(dims);
    if let Some(l) = args.get(3) {
        if l != "default" {
            let idx: Vec<usize> = l.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
            cfg = cfg.with_only_labels(&idx);
        }
    }
    std::fs::create_dir_all(&out).unwrap();
    let scan = generate_scan(&cfg, index).unwrap();
    let v = &scan.volume;
    let [nx, ny, nz] = v.dims();
    let sp = v.spacing();
    // Axial slices at 6 levels, lung and soft-tissue windows side by side.
    let levels: Vec<usize> = (1..=6).map(|i| i * nz / 7).collect();
    let mut img = image::GrayImage::new(2 * nx as u32, (ny * levels.len()) as u32);
    for (r, &z) in levels.iter().enumerate() {
        for y in 0..ny {
            for x in 0..nx {
                let hu = v.get(x, y, z);
                img.put_pixel(x as u32, (r * ny + y) as u32, image::Luma([win(hu, -1350.0, 150.0)]));
                img.put_pixel((nx + x) as u32, (r * ny + y) as u32, image::Luma([win(hu, -160.0, 240.0)]));
            }
        }
    }
    let mut a1 = image::GrayImage::new(2 * nx as u32, (ny * 3) as u32);
    let mut a2 = image::GrayImage::new(2 * nx as u32, (ny * 3) as u32);
    image::imageops::replace(
        &mut a1,
        &image::imageops::crop_imm(&img, 0, 0, 2 * nx as u32, 3 * ny as u32).to_image(),
        0,
        0,
    );
    image::imageops::replace(
        &mut a2,
        &image::imageops::crop_imm(&img, 0, 3 * ny as u32, 2 * nx as u32, 3 * ny as u32).to_image(),
        0,
        0,
    );
    image::imageops::resize(&a1, 4 * nx as u32, 6 * ny as u32, image::imageops::FilterType::Nearest)
        .save(out.join("axial_low.png"))
        .unwrap();
    image::imageops::resize(&a2, 4 * nx as u32, 6 * ny as u32, image::imageops::FilterType::Nearest)
        .save(out.join("axial_high.png"))
        .unwrap();
    let zs = (sp[2] / sp[0]).round().max(1.0) as usize;
    let mut cor = image::GrayImage::new(nx as u32 + ny as u32, (nz * zs) as u32);
    for z in 0..nz * zs {
        let k = nz - 1 - z / zs;
        for x in 0..nx {
            cor.put_pixel(x as u32, z as u32, image::Luma([win(v.get(x, ny / 2, k), -1350.0, 150.0)]));
        }
        for y in 0..ny {
            cor.put_pixel((nx + y) as u32, z as u32, image::Luma([win(v.get(nx / 2 - nx / 6, y, k), -1350.0, 150.0)]));
        }
    }
    let up = |im: image::GrayImage| {
        let (w, h) = im.dimensions();
        image::imageops::resize(&im, w * 3, h * 3, image::imageops::FilterType::Nearest)
    };
    up(cor).save(out.join("coronal_sagittal.png")).unwrap();
    std::fs::write(out.join("params.json"), serde_json::to_string_pretty(&scan.params).unwrap()).unwrap();
    std::fs::write(out.join("report.txt"), format!("{}\n\n{}\n", scan.findings, scan.impressions)).unwrap();
    println!("{:?} {} levels {:?}", v.dims(), v.orientation(), levels);
}
