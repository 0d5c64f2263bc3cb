//! Hostile inputs, family `data` (see main.rs).

use std::path::Path;

use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, InMemDicomObject};
use text2ct_io::dicom_write::{write_dicom_series, DicomSeriesInfo};
use text2ct_io::{Affine, Volume};

use crate::{check_all, s, scratch, setup, Case};

/// Split one CSV line (quotes hold commas; the phantom's metadata has no doubled quotes).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Set `column` of every row of a phantom's train metadata CSV to `value`.
fn edit_metadata(root: &Path, column: &str, value: &str) {
    let p = root.join("dataset/metadata/train_metadata.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let col = fields(&lines[0]).iter().position(|h| h == column).unwrap();
    for l in lines.iter_mut().skip(1) {
        let mut f = fields(l);
        f[col] = value.to_string();
        *l = f
            .iter()
            .map(|x| if x.contains(',') { format!("\"{x}\"") } else { x.clone() })
            .collect::<Vec<_>>()
            .join(",");
    }
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
}

/// A phantom data set (2 train volumes, 1 valid, raw storage) at `root`.
fn phantom(root: &Path) {
    setup(&["phantom", "--out", &s(root), "--count", "3", "--size", "32,32,16", "--store-raw", "--jobs", "2"]);
}

/// `prepare ctrate` of a phantom's train split into `out`, small geometry.
fn prepare<'a>(root: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "prepare",
        "ctrate",
        "--root",
        root,
        "--split",
        "train",
        "--out",
        out,
        "--spacing",
        "12,12,20",
        "--size",
        "32,32,16",
        "--jobs",
        "2",
    ]
}

pub fn cases() -> Vec<Case> {
    let d = scratch("data");
    let junk = d.join("junk.nii.gz");
    std::fs::write(&junk, b"not a nifti file").unwrap();
    let mut cases = vec![
        // A file with a NIfTI name that is not NIfTI.
        Case::new("nifti-junk", &["inspect", &s(&junk)]).mentions("junk.nii.gz"),
    ];

    // Issue 21 item 1: slopes that are not numbers (every train row): nothing can be brought to
    // HU, nothing is written, exit 1 naming the metadata CSV.
    let r = d.join("slope-abc");
    phantom(&r);
    edit_metadata(&r, "RescaleSlope", "abc");
    let (root, out) = (s(&r), s(&d.join("slope-abc-out")));
    cases.push(
        Case::new("prepare-slope-not-a-number", &prepare(&root, &out))
            .mentions("RescaleSlope \"abc\"")
            .mentions("train_metadata.csv")
            .writes_nothing_at(d.join("slope-abc-out/volumes/train_1_a_1.npy")),
    );
    let r = d.join("intercept-empty");
    phantom(&r);
    edit_metadata(&r, "RescaleIntercept", "");
    let (root, out) = (s(&r), s(&d.join("intercept-empty-out")));
    cases.push(
        Case::new("prepare-intercept-empty", &prepare(&root, &out))
            .mentions("RescaleIntercept \"\"")
            .writes_nothing_at(d.join("intercept-empty-out/volumes/train_1_a_1.npy")),
    );
    // No metadata row for any volume (the header only).
    let r = d.join("no-meta-row");
    phantom(&r);
    let mp = r.join("dataset/metadata/train_metadata.csv");
    let header = std::fs::read_to_string(&mp).unwrap().lines().next().unwrap().to_string();
    std::fs::write(&mp, header + "\n").unwrap();
    let (root, out) = (s(&r), s(&d.join("no-meta-row-out")));
    cases.push(
        Case::new("prepare-no-metadata-row", &prepare(&root, &out))
            .mentions("no row in the metadata CSV")
            .writes_nothing_at(d.join("no-meta-row-out/volumes/train_1_a_1.npy")),
    );

    // Issue 21 item 2: an unterminated quote swallowed the next row into the prompt, exit 0.
    let bad = d.join("unterminated.csv");
    std::fs::write(
        &bad,
        "id,prompt\na1,\"Findings: Left pleural effusion.\na2,\"Findings: Cardiomegaly.\"\na3,\"Findings: Nodule.\"\n",
    )
    .unwrap();
    let gen_out = d.join("gen-out");
    cases.push(
        Case::new(
            "generate-reports-unterminated-quote",
            &["generate", "--model", &s(&d.join("no-model")), "--reports", &s(&bad), "--out", &s(&gen_out)],
        )
        .mentions("unterminated.csv")
        .mentions("line 3")
        .writes_nothing_at(&gen_out),
    );
    let never = d.join("never-closed.csv");
    std::fs::write(&never, "id,prompt\na1,ok\na2,\"Findings: effusion.\na3,more\n").unwrap();
    cases.push(
        Case::new(
            "generate-reports-quote-never-closed",
            &["generate", "--model", &s(&d.join("no-model")), "--reports", &s(&never), "--out", &s(&gen_out)],
        )
        .mentions("never-closed.csv")
        .mentions("line 3")
        .writes_nothing_at(&gen_out),
    );
    // The same in CT-RATE's reports CSV: `prepare ctrate` refuses the file.
    let r = d.join("reports-quote");
    phantom(&r);
    let rp = r.join("dataset/radiology_text_reports/train_reports.csv");
    let text = std::fs::read_to_string(&rp).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "train_9_a_1.nii.gz,c,t,\"Findings: effusion.,Impression.");
    std::fs::write(&rp, lines.join("\n") + "\n").unwrap();
    let (root, out) = (s(&r), s(&d.join("reports-quote-out")));
    cases.push(
        Case::new("prepare-reports-unterminated-quote", &prepare(&root, &out))
            .mentions("train_reports.csv")
            .mentions("line ")
            .writes_nothing_at(d.join("reports-quote-out/volumes")),
    );

    // Issue 21 item 4: DICOM series folders read by `inspect` (the reader every command uses).
    // A slope of 0 flattened the series to -1024 HU, exit 0.
    let dcm = d.join("dicom-slope0");
    dicom_series(&dcm);
    edit_dicom(&dcm.join("IM0003.dcm"), DataElement::new(tags::RESCALE_SLOPE, VR::DS, "0"));
    cases.push(
        Case::new("dicom-rescale-slope-0", &["inspect", &s(&dcm)]).mentions("IM0003.dcm").mentions("RescaleSlope"),
    );
    // A truncated slice was skipped and a normal neighbour blamed for the gap.
    let dcm = d.join("dicom-truncated");
    dicom_series(&dcm);
    let b = std::fs::read(dcm.join("IM0002.dcm")).unwrap();
    std::fs::write(dcm.join("IM0002.dcm"), &b[..b.len() - 20]).unwrap();
    cases.push(Case::new("dicom-truncated-slice", &["inspect", &s(&dcm)]).mentions("IM0002.dcm").mentions("truncated"));
    // A real gap (a slice removed) names the two slices around it.
    let dcm = d.join("dicom-gap");
    dicom_series(&dcm);
    std::fs::remove_file(dcm.join("IM0003.dcm")).unwrap();
    cases.push(Case::new("dicom-gap", &["inspect", &s(&dcm)]).mentions("between IM0002.dcm and IM0004.dcm"));
    // NumberOfFrames larger than the pixel data was read as one slice.
    let dcm = d.join("dicom-frames");
    dicom_series(&dcm);
    edit_dicom(&dcm.join("IM0001.dcm"), DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "40"));
    cases.push(
        Case::new("dicom-number-of-frames", &["inspect", &s(&dcm)])
            .mentions("IM0001.dcm")
            .mentions("NumberOfFrames 40"),
    );

    // Issue 21 item 14: an unknown --spacing-source.
    let r = d.join("spacing-source");
    phantom(&r);
    let (root, out) = (s(&r), s(&d.join("spacing-source-out")));
    let mut a = prepare(&root, &out);
    a.extend(["--spacing-source", "dicom"]);
    cases.push(
        Case::new("prepare-spacing-source-unknown", &a)
            .mentions("--spacing-source")
            .writes_nothing_at(d.join("spacing-source-out")),
    );

    // Issue 21 item 10: `.npy` of any NumPy dtype is read, but a conversion that would change a
    // value is refused naming the file (`unet forward` on the small U-Net fixtures).
    let big = d.join("labels_int64_huge.npy");
    std::fs::write(&big, npy("<i8", "(2,)", &[1i64 << 40, 1].map(i64::to_le_bytes).concat())).unwrap();
    let half = d.join("labels_half.npy");
    std::fs::write(&half, npy("<f8", "(2,)", &[1.5f64, 1.0].map(f64::to_le_bytes).concat())).unwrap();
    let bool7 = d.join("labels_bool7.npy");
    std::fs::write(&bool7, npy("|b1", "(2,)", &[1, 7])).unwrap();
    let complex = d.join("labels_complex.npy");
    std::fs::write(&complex, npy("<c8", "(2,)", &[0; 16])).unwrap();
    let out = d.join("unet-out.npy");
    for (name, file, what) in [
        ("npy-int64-label-out-of-range", &big, "1099511627776"),
        ("npy-fractional-label", &half, "not a whole number"),
        ("npy-bool-byte-7", &bool7, "bool byte 7"),
        ("npy-unsupported-dtype", &complex, "unsupported dtype"),
    ] {
        let mut a = unet_forward(&out);
        a.extend(["--class-labels".to_string(), s(file)]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let fname = file.file_name().unwrap().to_string_lossy().to_string();
        cases.push(Case::new(name, &a).mentions(fname).mentions(what).writes_nothing_at(&out));
    }
    // An int64 latent whose value float32 cannot hold exactly.
    let x = d.join("x_int64.npy");
    let xs = text2ct_io::npy::NpyArray::read(&fixture("x.npy")).unwrap();
    let mut xi: Vec<i64> = xs.data.iter().map(|v| *v as i64).collect();
    xi[3] = (1 << 24) + 1;
    let shape = format!("({})", xs.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    std::fs::write(&x, npy("<i8", &shape, &xi.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())).unwrap();
    let mut a = unet_forward(&out);
    a.retain(|v| v != "--x" && !v.ends_with("/x.npy"));
    a.extend(["--x".to_string(), s(&x), "--class-labels".to_string(), s(&fixture("class_labels.npy"))]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    cases.push(
        Case::new("npy-int64-latent-beyond-float32", &a)
            .mentions("x_int64.npy")
            .mentions("element 3")
            .writes_nothing_at(&out),
    );
    cases
}

/// A file of the small U-Net fixtures of text2ct-models.
fn fixture(f: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../text2ct-models/fixtures/unet_small").join(f)
}

/// `unet forward` on the fixtures, without `--class-labels`.
fn unet_forward(out: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["unet", "forward"].map(String::from).to_vec();
    for (k, f) in [
        ("--config", "config.json"),
        ("--weights", "unet.pt"),
        ("--x", "x.npy"),
        ("--t", "t.npy"),
        ("--context", "context.npy"),
        ("--spacing", "spacing.npy"),
    ] {
        a.extend([k.to_string(), s(&fixture(f))]);
    }
    a.extend(["--output".to_string(), s(out)]);
    a
}

/// A `.npy` as NumPy writes it (`text2ct_io::npy::encode_raw`).
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    text2ct_io::npy::encode_raw(descr, false, shape, data)
}

/// A 6 x 5 x 4 CT series (IM0001.dcm … IM0004.dcm) written by text2ct's own DICOM writer.
fn dicom_series(dir: &Path) {
    let a = Affine::from_spacing_origin([0.8, 0.8, 2.5], [0.0; 3]).unwrap();
    let v = Volume::from_fn([6, 5, 4], a, |x, y, z| (x + 10 * y + 100 * z) as f32 - 1000.0).unwrap();
    let info = DicomSeriesInfo {
        series_description: "hostile".into(),
        image_comments: "hostile".into(),
        patient_id: "hostile".into(),
        uid_key: "hostile".into(),
        created_unix_s: 0,
    };
    write_dicom_series(&v, dir, &info).unwrap();
}

/// Put `e` into the DICOM file at `p` (replacing the element of that tag).
fn edit_dicom(p: &Path, e: DataElement<InMemDicomObject>) {
    let mut obj = open_file(p).unwrap();
    obj.put(e);
    obj.write_to_file(p).unwrap();
}

#[test]
fn hostile_data() {
    check_all("data", cases());
}
