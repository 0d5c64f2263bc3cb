//! The API of `text2ct serve` end to end on the embedded default model (64x64x32, few steps):
//! every endpoint, server-sent progress, cancel, a full queue, 50 concurrent downloads while a job
//! runs, path-traversal attempts, tokens, bad input.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use text2ct_io::nifti_io::{read_nifti, write_nifti, WriteOptions};
use text2ct_io::{Affine, Limits, Volume};

fn phantom() -> Volume {
    let a = Affine::from_spacing_origin([2.0, 2.0, 4.0], [0.0; 3]).unwrap();
    Volume::from_fn([24, 20, 12], a, |x, y, z| if (x + y + z) % 7 == 0 { 300.0 } else { -800.0 + x as f32 * 10.0 })
        .unwrap()
}

#[test]
fn generate_view_download_open_and_refuse() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // Data root: a NIfTI, a DICOM series folder, a symlink leading out, a non-volume file.
    let vol = phantom();
    write_nifti(&data.path().join("ct.nii.gz"), &vol, &WriteOptions::ct_hu()).unwrap();
    write_nifti(&outside.path().join("secret.nii.gz"), &vol, &WriteOptions::ct_hu()).unwrap();
    let info = text2ct_io::dicom_write::DicomSeriesInfo {
        series_description: "test".into(),
        image_comments: "test".into(),
        patient_id: "T".into(),
        uid_key: "k".into(),
        created_unix_s: 0,
    };
    text2ct_io::dicom_write::write_dicom_series(&vol, &data.path().join("series"), &info).unwrap();
    std::fs::write(data.path().join("notes.txt"), b"hello").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(outside.path(), data.path().join("link-out")).unwrap();

    let srv = start(out.path(), Some(data.path()), 8, None);
    let a = srv.addr;

    // The page and its assets.
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("niivue.umd.js"));
    let nv = get(a, "/niivue.umd.js");
    assert_eq!(nv.status, 200);
    assert!(nv.body.len() > 1_000_000, "NiiVue is embedded");
    assert!(get(a, "/NIIVUE-LICENSE").text().contains("BSD 2-Clause"));
    let info = get(a, "/api/info").json();
    assert_eq!(info["defaults"]["size"], json!([64, 64, 32]));

    // Generate with progress over server-sent events.
    let r = post_json(
        a,
        "/api/generate",
        &json!({"prompt": "Findings: Right pleural effusion. Impression: effusion.", "steps": 3, "seed": 7}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let ev = get(a, &format!("/api/jobs/{id}/events"));
    assert_eq!(ev.status, 200);
    assert!(ev.header("content-type").unwrap().starts_with("text/event-stream"));
    let events: Vec<serde_json::Value> = ev
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(events.len() >= 2, "{events:?}");
    assert_eq!(state(events.last().unwrap()), "done", "{events:?}");
    assert!(events.iter().any(|e| e["phase"] == "sampling" || e["phase"] == "decoding"), "{events:?}");
    let done = wait_job(a, &id, 60, |s| state(s) == "done");
    let vid = done["volumes"][0].as_str().unwrap().to_string();
    assert!(vid.ends_with("_seed7"), "{vid}");

    // The gallery and the volume's files.
    let g = get(a, "/api/volumes").json();
    assert_eq!(g.as_array().unwrap().len(), 1);
    assert_eq!(g[0]["id"], json!(vid));
    assert_eq!(g[0]["seed"], json!(7));
    let nii = get(a, &format!("/api/volumes/{vid}.nii.gz"));
    assert_eq!(nii.status, 200);
    assert_eq!(&nii.body[..2], &[0x1f, 0x8b], "gzip");
    assert_eq!(nii.body, std::fs::read(out.path().join(format!("{vid}.nii.gz"))).unwrap());
    assert_eq!(get(a, &format!("/api/volumes/{vid}/volume.nii.gz")).body, nii.body);
    let png = get(a, &format!("/api/volumes/{vid}/preview.png"));
    assert_eq!((png.status, png.header("content-type")), (200, Some("image/png")));
    assert_eq!(&png.body[1..4], b"PNG");
    let sc = get(a, &format!("/api/volumes/{vid}/sidecar.json")).json();
    assert_eq!(sc["seed"], json!(7));
    assert_eq!(sc["steps"], json!(3));
    let zip = get(a, &format!("/api/volumes/{vid}/dicom.zip"));
    assert_eq!(zip.status, 200, "{}", zip.text());
    assert_eq!(&zip.body[..4], b"PK\x03\x04");
    let mut ar = zip::ZipArchive::new(std::io::Cursor::new(&zip.body)).unwrap();
    assert_eq!(ar.len(), 32, "one DICOM file per slice");
    let mut first = Vec::new();
    std::io::Read::read_to_end(&mut ar.by_index(0).unwrap(), &mut first).unwrap();
    assert_eq!(&first[128..132], b"DICM");
    assert!(ar.file_names().all(|n| n.is_ok_and(|n| n.starts_with(&format!("{vid}_dicom/")) && n.ends_with(".dcm"))));
    assert_eq!(get(a, &format!("/api/volumes/{vid}/dicom.zip")).body, zip.body, "cached zip");

    // 3D renderings (MIP, volume rendering) of the volume, as `text2ct render` draws them.
    let mip = get(a, &format!("/api/volumes/{vid}/render.png?mode=mip&angles=2"));
    assert_eq!((mip.status, mip.header("content-type")), (200, Some("image/png")), "{}", mip.text());
    let img = image::load_from_memory(&mip.body).unwrap();
    assert!(img.width() > 2 * img.height() - 8, "two views side by side: {}x{}", img.width(), img.height());
    let dvr = get(a, &format!("/api/volumes/{vid}/render.png?mode=dvr"));
    assert_eq!(dvr.status, 200);
    assert_ne!(dvr.body, mip.body);
    for q in ["mode=surface", "angles=0", "angles=99", "angles=x"] {
        let r = get(a, &format!("/api/volumes/{vid}/render.png?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }

    // 50 clients fetch the volume while a long job runs: all answered, all the same bytes.
    let long = post_json(a, "/api/generate", &json!({"prompt": "Findings: normal.", "steps": 1000}));
    assert_eq!(long.status, 202);
    let long_id = long.json()["id"].as_str().unwrap().to_string();
    wait_job(a, &long_id, 60, |s| state(s) == "running");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let path = if i % 5 == 0 {
                format!("/api/volumes/{vid}/preview.png")
            } else {
                format!("/api/volumes/{vid}.nii.gz")
            };
            std::thread::spawn(move || get(a, &path))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        if i % 5 == 0 {
            assert_eq!(r.body, png.body);
        } else {
            assert_eq!(r.body, nii.body);
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "downloads took {:?}", t0.elapsed());
    assert_eq!(
        state(&get(a, &format!("/api/jobs/{long_id}")).json()),
        "running",
        "the job ran on beside the downloads"
    );
    let c = request(a, "DELETE", &format!("/api/jobs/{long_id}"), &[], None);
    assert_eq!(c.status, 200, "{}", c.text());
    let s = wait_job(a, &long_id, 30, |s| state(s) == "cancelled");
    assert!(s["step"].as_u64().unwrap() < 1000, "stopped between steps: {s}");
    let again = request(a, "DELETE", &format!("/api/jobs/{long_id}"), &[], None);
    assert_eq!(again.status, 409);
    assert!(again.json()["error"].as_str().unwrap().contains("already finished"));
    let stem = s["volumes"].as_array().unwrap().len();
    assert_eq!(stem, 0);
    let files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.iter().any(|f| f.contains(&format!("-{long_id}_seed"))),
        "a cancelled job writes nothing: {files:?}"
    );

    // Opening CTs under the data root: a NIfTI file and a DICOM folder, with the listing.
    let ls = get(a, "/api/files").json();
    let names: Vec<&str> = ls["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["ct.nii.gz", "series"], "no text files, no symlink out");
    let o = post_json(a, "/api/open", &json!({"path": "ct.nii.gz"}));
    assert_eq!(o.status, 200, "{}", o.text());
    let oid = o.json()["id"].as_str().unwrap().to_string();
    assert_eq!(o.json()["info"]["dims"], json!([24, 20, 12]));
    let onii = get(a, &format!("/api/volumes/{oid}.nii.gz"));
    assert_eq!(onii.status, 200);
    let tmp = out.path().join("check.nii.gz");
    std::fs::write(&tmp, &onii.body).unwrap();
    let (back, _) = read_nifti(&tmp, &Limits::default()).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(back.data(), vol.data());
    assert_eq!(get(a, &format!("/api/volumes/{oid}/preview.png")).status, 200);
    assert_eq!(get(a, &format!("/api/volumes/{oid}/dicom.zip")).status, 404);
    let od = post_json(a, "/api/open", &json!({"path": "series"}));
    assert_eq!(od.status, 200, "{}", od.text());
    assert_eq!(od.json()["info"]["kind"], json!("dicom"));
    assert_eq!(od.json()["info"]["dims"], json!([24, 20, 12]));
    assert_eq!(get(a, "/api/volumes").json().as_array().unwrap().len(), 1, "opened volumes are not in the gallery");

    // Path traversal, every way: refused with 4xx and a JSON error, nothing read.
    for p in ["../secret.nii.gz", "series/../../x", "/etc/passwd", "link-out/secret.nii.gz", "%2e%2e/secret.nii.gz"] {
        let r = post_json(a, "/api/open", &json!({"path": p}));
        assert!((400..500).contains(&r.status), "{p}: {} {}", r.status, r.text());
        assert!(r.json()["error"].is_string());
    }
    for p in ["notes.txt", ""] {
        assert_eq!(post_json(a, "/api/open", &json!({"path": p})).status, 400, "{p}");
    }
    for p in ["/api/files?dir=..", "/api/files?dir=%2e%2e", "/api/files?dir=/etc", "/api/files?dir=link-out"] {
        let r = get(a, p);
        assert!(r.status == 403 || r.status == 404, "{p}: {} {}", r.status, r.text());
    }
    for p in [
        "/api/volumes/..%2F..%2Fetc%2Fpasswd.nii.gz",
        "/api/volumes/%2e%2e%2f%2e%2e%2fetc%2fpasswd.nii.gz",
        "/api/volumes/%2e%2e/sidecar.json",
        "/api/volumes/../../etc/passwd",
        "/api/volumes/.serve-cache/sidecar.json",
        "/api/volumes/x%00.nii.gz",
        "/api/volumes/%2Fetc%2Fpasswd/sidecar.json",
    ] {
        let r = get(a, p);
        assert!((400..500).contains(&r.status), "{p}: {} {}", r.status, r.text());
    }
    #[cfg(unix)]
    {
        // A symlink planted in the output folder that leads out is not followed.
        std::os::unix::fs::symlink(outside.path().join("secret.nii.gz"), out.path().join("planted.nii.gz")).unwrap();
        assert_eq!(get(a, "/api/volumes/planted.nii.gz").status, 403);
    }

    // Bad input and unknown ids: 4xx with a JSON error.
    let bad = request(a, "POST", "/api/generate", &[("Content-Type", "application/json")], Some(b"{not json"));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("request body"));
    assert_eq!(request(a, "POST", "/api/generate", &[], Some(b"{}")).status, 415, "no JSON content type");
    for b in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": "x", "steps": 0}),
        json!({"prompt": "x", "steps": 100000}),
        json!({"prompt": "x", "count": 0}),
        json!({"prompt": "x", "count": 17}),
        json!({"prompt": "x", "guidance": 1e9}),
        json!({"prompt": "x", "sampler": "euler"}),
        json!({"prompt": "x", "bogus": 1}),
        json!({"prompt": "x".repeat(9000)}),
    ] {
        let r = post_json(a, "/api/generate", &b);
        assert!(r.status == 400 || r.status == 422, "{b}: {} {}", r.status, r.text());
        assert!(r.json()["error"].is_string());
    }
    let huge = vec![b'a'; 200_000];
    assert_eq!(request(a, "POST", "/api/generate", &[("Content-Type", "application/json")], Some(&huge)).status, 413);
    assert_eq!(get(a, "/api/jobs/999999").status, 404);
    assert_eq!(get(a, "/api/jobs/999999/events").status, 404);
    assert_eq!(request(a, "DELETE", "/api/jobs/nope", &[], None).status, 404);
    assert_eq!(get(a, "/api/volumes/nope_seed1.nii.gz").status, 404);
    assert_eq!(get(a, &format!("/api/volumes/{vid}/other.bin")).status, 404);
    assert_eq!(get(a, "/api/volumes/nope.txt").status, 404);
    assert_eq!(get(a, "/api/nothing").status, 404);
    srv.stop().unwrap();
}

#[test]
fn queue_full_cancel_and_shutdown() {
    let out = tempfile::tempdir().unwrap();
    let srv = start(out.path(), None, 1, None);
    let a = srv.addr;
    // Opening is off without --data-root.
    assert_eq!(post_json(a, "/api/open", &json!({"path": "x.nii"})).status, 403);
    let long =
        |seed: u64| post_json(a, "/api/generate", &json!({"prompt": "Findings: normal.", "steps": 1000, "seed": seed}));
    let j1 = long(1);
    assert_eq!(j1.status, 202);
    let id1 = j1.json()["id"].as_str().unwrap().to_string();
    wait_job(a, &id1, 60, |s| state(s) == "running" && s["step"].as_u64().unwrap() >= 1);
    let j2 = long(2);
    assert_eq!(j2.status, 202, "one job may wait");
    let id2 = j2.json()["id"].as_str().unwrap().to_string();
    assert_eq!(state(&get(a, &format!("/api/jobs/{id2}")).json()), "queued");
    let j3 = long(3);
    assert_eq!(j3.status, 429, "{}", j3.text());
    assert!(j3.json()["error"].as_str().unwrap().contains("queue is full"));
    // A queued job is cancelled at once; it never runs.
    let c2 = request(a, "DELETE", &format!("/api/jobs/{id2}"), &[], None);
    assert_eq!(c2.status, 200);
    assert_eq!(state(&c2.json()), "cancelled");
    // Ctrl-C (the same shutdown): the running job stops at its next step, nothing is left behind.
    let t0 = Instant::now();
    let state_handle = srv.state.clone();
    srv.stop().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30), "shutdown took {:?}", t0.elapsed());
    let e1 = state_handle.queue.get(&id1).unwrap().snapshot();
    assert_eq!(serde_json::to_value(e1.state).unwrap(), json!("cancelled"));
    assert!(e1.step < 1000);
    let left: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".serve-cache")
        .collect();
    assert!(left.is_empty(), "nothing written by cancelled jobs: {left:?}");
}

#[test]
fn tokens_and_non_loopback_hosts() {
    let out = tempfile::tempdir().unwrap();
    // A non-loopback address without a token is refused before anything loads or listens.
    let mut c = text2ct_serve::ServeConfig::new(out.path().to_path_buf());
    c.host = "0.0.0.0".into();
    c.port = 0;
    let e = text2ct_serve::BackgroundServer::start(c, text2ct_models::burn::prelude::Device::flex()).err().unwrap();
    assert!(e.contains("--token"), "{e}");
    let srv = start(out.path(), None, 2, Some("s3cret-token"));
    let a = srv.addr;
    assert_eq!(get(a, "/").status, 200, "the page itself holds no data");
    assert_eq!(get(a, "/api/info").status, 401);
    assert_eq!(get(a, "/api/volumes").status, 401);
    assert_eq!(request(a, "GET", "/api/info", &[("Authorization", "Bearer wrong")], None).status, 401);
    assert_eq!(request(a, "GET", "/api/info", &[("Authorization", "Bearer s3cret-token")], None).status, 200);
    assert_eq!(get(a, "/api/info?token=s3cret-token").status, 200);
    assert_eq!(get(a, "/api/info?token=s3cret-tokeN").status, 401);
    let r = request(
        a,
        "POST",
        "/api/generate",
        &[("Content-Type", "application/json")],
        Some(json!({"prompt": "x"}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 401, "no job without the token");
    srv.stop().unwrap();
}
