//! The hostile-input corpus: inputs a careless or hostile user gives the `text2ct` binary, each
//! made at test time (nothing large is committed) and run with a time limit. Every case must end
//! with exit code 1 and a message that names the file or option at fault: no panic, no abort (a
//! signal), no hang, and nothing written where the case says nothing may be written.
//!
//! One family per file (`data.rs`: CT-RATE folders, CSVs, DICOM, `.npy`; `limits.rs`: sizes,
//! counts, seeds and non-finite numbers; `models.rs`: model folders, cards, checkpoints). A
//! family returns its [`Case`]s; [`run_case`] judges them all alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod data;
mod limits;
mod models;

/// One hostile input.
pub struct Case {
    /// Short name, printed on failure.
    pub name: String,
    /// The command line (after `text2ct`).
    pub args: Vec<String>,
    /// Each of these must appear in stderr (e.g. the file name or the option).
    pub mentions: Vec<String>,
    /// Paths that must not exist after the run (outputs that would be wrong).
    pub must_not_exist: Vec<PathBuf>,
    /// Environment variables for the run.
    pub env: Vec<(String, String)>,
    /// Wall-clock limit; past it the case counts as a hang.
    pub timeout: Duration,
}

impl Case {
    pub fn new(name: impl Into<String>, args: &[&str]) -> Case {
        Case {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            mentions: vec![],
            must_not_exist: vec![],
            env: vec![],
            timeout: Duration::from_secs(60),
        }
    }
    /// stderr must contain `s`.
    pub fn mentions(mut self, s: impl Into<String>) -> Case {
        self.mentions.push(s.into());
        self
    }
    /// `p` must not exist afterwards.
    pub fn writes_nothing_at(mut self, p: impl Into<PathBuf>) -> Case {
        self.must_not_exist.push(p.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Case {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Case {
        self.timeout = t;
        self
    }
}

/// A fresh scratch folder for one family.
pub fn scratch(family: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("text2ct-hostile-{}-{}", family, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Run the binary to completion (for setting cases up); panics if it fails.
pub fn setup(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_text2ct")).args(args).output().expect("binary runs");
    assert!(
        o.status.success(),
        "set-up {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Run one case; `Err` says how it misbehaved.
pub fn run_case(c: &Case) -> Result<(), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_text2ct"));
    cmd.args(&c.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).ok();
        b
    });
    let te = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).ok();
        b
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if start.elapsed() > c.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hung: still running after {:?}", c.timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&to.join().unwrap()).to_string();
    let stderr = String::from_utf8_lossy(&te.join().unwrap()).to_string();
    let ctx = format!("\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    match status.code() {
        None => return Err(format!("killed by a signal (abort?): {status:?}{ctx}")),
        Some(0) => return Err(format!("accepted (exit 0){ctx}")),
        Some(1) => {}
        Some(c) => return Err(format!("exit code {c} (101 is a panic){ctx}")),
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        return Err(format!("panicked{ctx}"));
    }
    for m in &c.mentions {
        if !stderr.contains(m.as_str()) {
            return Err(format!("the message does not mention {m:?}{ctx}"));
        }
    }
    for p in &c.must_not_exist {
        if p.exists() {
            return Err(format!("wrote {} although it refused{ctx}", p.display()));
        }
    }
    Ok(())
}

/// Run a family's cases; one report listing every failing case.
pub fn check_all(family: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty(), "family {family} has no cases");
    let mut failed = Vec::new();
    for c in &cases {
        if let Err(e) = run_case(c) {
            failed.push(format!("[{family}/{}] {:?}: {e}", c.name, c.args));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} hostile cases misbehaved:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n\n")
    );
    eprintln!("{family}: {} hostile cases, each refused cleanly", cases.len());
}
