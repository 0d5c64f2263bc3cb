//! `text2ct serve` and `text2ct render` through the binary: the start-up refusal of a
//! non-loopback host without a token, Ctrl-C while a job runs, and 3D renderings of a phantom.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_text2ct"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn fails(args: &[&str], want: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail cleanly: {err}");
    assert!(err.contains(want), "{args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    let b = body.unwrap_or("");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[test]
fn serve_refuses_a_public_host_without_a_token() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    fails(&["serve", "--host", "0.0.0.0", "--port", "0", "--out", s(&out)], "--token");
    fails(&["serve", "--host", "nonsense", "--port", "0", "--out", s(&out)], "--host");
    fails(&["serve", "--port", "0", "--out", s(&out), "--data-root", s(&d.path().join("missing"))], "--data-root");
    assert!(!out.exists(), "nothing written before the checks pass");
}

#[cfg(unix)]
#[test]
fn serve_stops_cleanly_on_ctrl_c_while_a_job_runs() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let mut child = bin()
        .args(["serve", "--port", "0", "--out", s(&out)])
        .env("TEXT2CT_CACHE", d.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (st, body) = http(addr, "POST", "/api/generate", Some(r#"{"prompt": "Findings: normal.", "steps": 1000}"#));
    assert_eq!(st, 202, "{body}");
    let t0 = Instant::now();
    loop {
        let (_, b) = http(addr, "GET", "/api/jobs/1", None);
        if b.contains("\"running\"") && !b.contains("\"step\":0") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{b}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let k = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(k.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let left: Vec<PathBuf> =
        std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).filter(|p| !p.ends_with(".serve-cache")).collect();
    assert!(left.is_empty(), "the cancelled job left files: {left:?}");
}

#[test]
fn render_mip_and_dvr_of_a_phantom() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("p");
    let o = run(&["phantom", "--out", s(&data), "--count", "1", "--size", "48,48,24", "--seed", "1", "--jobs", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vol = data.join("dataset/train/train_1/train_1_a/train_1_a_1.nii.gz");
    assert!(vol.is_file());
    for (mode, angles) in [("mip", "1"), ("dvr", "1"), ("dvr", "4")] {
        let png = d.path().join(format!("{mode}{angles}.png"));
        let o = run(&["render", s(&vol), "--out", s(&png), "--mode", mode, "--angles", angles, "--size", "96"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let img = image::open(&png).unwrap().to_rgb8();
        let lit = img.pixels().filter(|p| p.0.iter().any(|&c| c > 30)).count() as f64 / img.pixels().len() as f64;
        assert!(lit > 0.05, "{mode}: {:.1}% lit", lit * 100.0);
        if angles == "4" {
            assert!(img.width() > 3 * img.height(), "a strip of 4 views: {}x{}", img.width(), img.height());
        }
    }
    let png = d.path().join("x.png");
    fails(&["render", s(&vol), "--out", s(&png), "--mode", "surface"], "--mode");
    fails(&["render", s(&vol), "--out", s(&png), "--angles", "0"], "--angles");
    fails(&["render", s(&vol), "--out", s(&png), "--window", "wide"], "--window");
    fails(&["render", s(&d.path().join("none.nii.gz")), "--out", s(&png)], "none.nii.gz");
}
