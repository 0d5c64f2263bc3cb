//! The one-command evaluation report: `text2ct eval report --config EVAL.toml --out DIR` runs the
//! sections the TOML configures and writes one folder — `report.md` (every table in the paper's
//! shape), `report.json`, the PNGs, a copy of the config — with a provenance block (the exact
//! command and config, text2ct version and git commit, backbones and weight hashes, the machine,
//! wall time per section). See `docs/evaluation/report.md`.
//!
//! Sections (each optional, at least one):
//! * `[fid]` → Table 2: FID 2.5D per plane and mean, FID 3D; one row per `[[fid.sets]]` entry.
//! * `[clip]` → Table 4: zero-shot, volume-to-volume MAP@K, report-to-volume Recall@K.
//! * `[sweep]` → Figure 3: FID against the guidance scale (its `fid` protocol and `real` set
//!   default to the `[fid]` section's).
//!
//! Relative paths are taken relative to the current working directory. Every section is checked
//! (fields, input files) before anything runs; an error names its section. If a section fails
//! while running, the sections done so far are still written (`report.md` says which failed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use text2ct_eval::clip_eval::ClipEvalReport;
use text2ct_eval::fid::{BackboneInfo, SetInfo, VolumeSet};
use text2ct_models::burn::tensor::Device;

use crate::clip::{run_clip_eval, ClipEvalConfig};
use crate::error::{json_bytes, write_atomic, BenchError, Result};
use crate::fidset::{BackboneSpec, FidEngine, FidScores, FidSpec};
use crate::plot::panels_png;
use crate::sweep::{fmt_opt, run_sweep, short, SweepConfig, SweepEvent, SweepReport};

/// The sections this build knows, in the order they run and appear.
pub const SECTIONS: &[&str] = &["fid", "clip", "sweep"];

/// One generated set of Table 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedSet {
    /// The row label (e.g. "Ours").
    pub name: String,
    pub path: PathBuf,
}

/// `[fid]`: the real set, the generated sets (rows), the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidSection {
    pub real: PathBuf,
    pub sets: Vec<NamedSet>,
    #[serde(default)]
    pub backbone_3d: Option<BackboneSpec>,
    #[serde(default)]
    pub backbone_2d: Option<BackboneSpec>,
    #[serde(default)]
    pub size: Option<[usize; 3]>,
    #[serde(default)]
    pub planes: Option<Vec<String>>,
    #[serde(default)]
    pub center_fraction: Option<f64>,
    #[serde(default)]
    pub batch: Option<usize>,
}

impl FidSection {
    pub fn spec(&self) -> FidSpec {
        let d = FidSpec::default();
        FidSpec {
            backbone_3d: self.backbone_3d.clone(),
            backbone_2d: self.backbone_2d.clone(),
            size: self.size,
            planes: self.planes.clone().unwrap_or(d.planes),
            center_fraction: self.center_fraction.unwrap_or(d.center_fraction),
            batch: self.batch.unwrap_or(d.batch),
        }
    }

    fn validate(&self) -> Result<()> {
        if !self.real.exists() {
            return crate::error::input(format!("real set {}: no such file or folder", self.real.display()));
        }
        if self.sets.is_empty() {
            return crate::error::input("no generated sets: add [[fid.sets]] entries with name and path");
        }
        for (i, s) in self.sets.iter().enumerate() {
            if s.name.trim().is_empty() {
                return crate::error::input(format!("fid.sets[{i}] has an empty name"));
            }
            if self.sets[..i].iter().any(|o| o.name == s.name) {
                return crate::error::input(format!("fid.sets: the name {:?} is used twice", s.name));
            }
            if !s.path.exists() {
                return crate::error::input(format!(
                    "fid.sets {:?}: {}: no such file or folder",
                    s.name,
                    s.path.display()
                ));
            }
        }
        self.spec().validate()?;
        check_set(&self.real, "real set")?;
        for s in &self.sets {
            check_set(&s.path, &format!("fid.sets {:?}", s.name))?;
        }
        Ok(())
    }
}

/// Open a volume set and check it holds at least 2 volumes (what an FID needs).
pub(crate) fn check_set(path: &Path, what: &str) -> Result<()> {
    let set = VolumeSet::open(path).map_err(|e| BenchError::Input(format!("{what}: {e}")))?;
    if set.len() < 2 {
        return crate::error::input(format!(
            "{what} {}: {} volume(s); an FID needs at least 2 per set",
            path.display(),
            set.len()
        ));
    }
    Ok(())
}

/// `[clip]`: [`ClipEvalConfig`] plus the row label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSection {
    #[serde(default)]
    pub name: Option<String>,
    pub model: PathBuf,
    pub manifest: PathBuf,
    #[serde(default)]
    pub batch: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ClipSection {
    pub fn config(&self) -> ClipEvalConfig {
        ClipEvalConfig {
            model: self.model.clone(),
            manifest: self.manifest.clone(),
            batch: self.batch.unwrap_or(8),
            limit: self.limit,
        }
    }
}

/// `[sweep]`: [`SweepConfig`] plus where its volumes go (default `OUT/sweep`).
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSection {
    pub config: SweepConfig,
    pub out: Option<PathBuf>,
}

/// A parsed evaluation config.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    pub title: String,
    pub fid: Option<FidSection>,
    pub clip: Option<ClipSection>,
    pub sweep: Option<SweepSection>,
    /// The TOML text as given.
    pub text: String,
}

fn section_err(section: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Section { section: section.into(), message: e.to_string() }
}

fn from_value<T: serde::de::DeserializeOwned>(section: &str, v: toml::Value) -> Result<T> {
    v.try_into().map_err(|e: toml::de::Error| section_err(section, e.to_string().trim()))
}

impl EvalConfig {
    /// Parse (no file is touched; see [`EvalConfig::validate`]).
    pub fn from_toml_str(text: &str) -> Result<EvalConfig> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| BenchError::Input(format!("bad TOML: {}", e.to_string().trim())))?;
        let mut cfg = EvalConfig {
            title: "text2ct evaluation report".into(),
            fid: None,
            clip: None,
            sweep: None,
            text: text.into(),
        };
        for k in table.keys() {
            if k != "report" && !SECTIONS.contains(&k.as_str()) {
                return Err(BenchError::Input(format!(
                    "unknown section [{k}]; this build knows [report] and [{}]",
                    SECTIONS.join("], [")
                )));
            }
        }
        if let Some(r) = table.get("report") {
            let r = r.as_table().ok_or_else(|| section_err("report", "must be a table"))?;
            for (k, v) in r {
                match (k.as_str(), v.as_str()) {
                    ("title", Some(t)) => cfg.title = t.into(),
                    _ => return Err(section_err("report", format!("unknown or non-string key {k:?} (only title)"))),
                }
            }
        }
        if let Some(v) = table.get("fid") {
            cfg.fid = Some(from_value("fid", v.clone())?);
        }
        if let Some(v) = table.get("clip") {
            cfg.clip = Some(from_value("clip", v.clone())?);
        }
        if let Some(v) = table.get("sweep") {
            let mut t = v.as_table().cloned().ok_or_else(|| section_err("sweep", "must be a table"))?;
            let out = match t.remove("out") {
                Some(o) => Some(PathBuf::from(o.as_str().ok_or_else(|| section_err("sweep", "out must be a path"))?)),
                None => None,
            };
            // Defaults from [fid]: its real set and its protocol.
            if let Some(f) = table.get("fid").and_then(|f| f.as_table()) {
                if !t.contains_key("real") {
                    if let Some(r) = f.get("real") {
                        t.insert("real".into(), r.clone());
                    }
                }
                if !t.contains_key("fid") {
                    let mut p = f.clone();
                    p.remove("real");
                    p.remove("sets");
                    t.insert("fid".into(), toml::Value::Table(p));
                }
            }
            cfg.sweep = Some(SweepSection { config: from_value("sweep", toml::Value::Table(t))?, out });
        }
        if cfg.fid.is_none() && cfg.clip.is_none() && cfg.sweep.is_none() {
            return Err(BenchError::Input(format!("the config has no section to run ([{}])", SECTIONS.join("], ["))));
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<EvalConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| text2ct_io::IoError::os(path, e))?;
        Self::from_toml_str(&text).map_err(|e| BenchError::Input(format!("{}: {e}", path.display())))
    }

    /// Check every section's fields and inputs; the error names the section.
    pub fn validate(&self) -> Result<()> {
        if let Some(f) = &self.fid {
            f.validate().map_err(|e| section_err("fid", e))?;
        }
        if let Some(c) = &self.clip {
            c.config().validate().map_err(|e| section_err("clip", e))?;
        }
        if let Some(s) = &self.sweep {
            s.config.validate().map_err(|e| section_err("sweep", e))?;
        }
        Ok(())
    }

    /// The configured sections, in run order.
    pub fn sections(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.fid.is_some() {
            v.push("fid");
        }
        if self.clip.is_some() {
            v.push("clip");
        }
        if self.sweep.is_some() {
            v.push("sweep");
        }
        v
    }
}

/// One row of Table 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidRow {
    pub name: String,
    pub set: SetInfo,
    #[serde(flatten)]
    pub scores: FidScores,
}

/// Table 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidTable {
    pub real: SetInfo,
    pub backbones: Vec<BackboneInfo>,
    pub protocol: serde_json::Value,
    pub rows: Vec<FidRow>,
}

/// The machine a report ran on (each fact fails soft to `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub os: String,
    pub arch: String,
    pub threads: usize,
    pub cpu_model: Option<String>,
    pub memory_gib: Option<f64>,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
        Machine {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            memory_gib,
        }
    }
}

/// Wall time of one section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SectionTime {
    pub section: String,
    pub seconds: f64,
    pub ok: bool,
}

/// How the report was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line as run.
    pub command: Vec<String>,
    pub config_path: String,
    /// The config as given (also copied to `config.toml`).
    pub config: String,
    pub text2ct_version: String,
    /// `TEXT2CT_GIT_COMMIT` at build time, else `git rev-parse HEAD` in the source tree the
    /// binary was built from (when it is still there).
    pub git_commit: Option<String>,
    /// Uncommitted changes in the working tree (`git status --porcelain`), when git answered.
    pub git_dirty: Option<bool>,
    pub started_utc: String,
    pub machine: Machine,
    pub sections: Vec<SectionTime>,
    pub wall_seconds: f64,
}

fn git(args: &[&str]) -> Option<String> {
    // The source tree this binary was built from (not the working directory, which may be any
    // other repository); absent when the binary runs on another machine.
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !src.is_dir() {
        return None;
    }
    let o = std::process::Command::new("git")
        .arg("-C")
        .arg(src)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The commit text2ct was built from or runs in, failing soft.
pub fn git_commit() -> (Option<String>, Option<bool>) {
    if let Some(c) = option_env!("TEXT2CT_GIT_COMMIT") {
        return (Some(c.into()), None);
    }
    let commit = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty());
    let dirty =
        commit.as_ref().and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"])).map(|s| !s.is_empty());
    (commit, dirty)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A failed section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub section: String,
    pub error: String,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub format: String,
    pub title: String,
    pub fid: Option<FidTable>,
    pub clip: Option<ClipEvalReport>,
    pub sweep: Option<SweepReport>,
    pub failed: Option<Failure>,
    pub provenance: Provenance,
}

/// What the caller says about the run.
pub struct ReportRun<'a> {
    pub config: &'a EvalConfig,
    pub config_path: &'a Path,
    pub command: Vec<String>,
    pub out: &'a Path,
}

/// Progress lines (`section`, message).
pub type Log<'a> = &'a mut dyn FnMut(&str, &str);

fn run_fid(sec: &FidSection, dev: &Device, log: Log) -> Result<FidTable> {
    let mut engine = FidEngine::new(&sec.spec(), &sec.real, None, dev)?;
    let mut rows = Vec::new();
    for s in &sec.sets {
        log("fid", &format!("{}: {}", s.name, s.path.display()));
        let set = VolumeSet::open(&s.path).map_err(|e| BenchError::Input(format!("set {:?}: {e}", s.name)))?;
        let scores = engine
            .score(&set, &mut |_, _, _, _| {})
            .map_err(|e| BenchError::Input(format!("set {:?}: {e}", s.name)))?;
        rows.push(FidRow { name: s.name.clone(), set: SetInfo::of(&set), scores });
    }
    Ok(FidTable { real: SetInfo::of(&engine.real), backbones: engine.backbones(), protocol: engine.protocol(), rows })
}

/// Run the configured sections and write the folder. Returns the report, or the first
/// section's error (after writing what was done).
pub fn run_report(run: &ReportRun, dev: &Device, log: Log) -> Result<EvalReport> {
    let cfg = run.config;
    cfg.validate()?;
    let t_all = Instant::now();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (git_commit, git_dirty) = git_commit();
    std::fs::create_dir_all(run.out).map_err(|e| text2ct_io::IoError::os(run.out, e))?;
    write_atomic(&run.out.join("config.toml"), cfg.text.as_bytes())?;
    let mut rep = EvalReport {
        format: "text2ct-eval-report-v1".into(),
        title: cfg.title.clone(),
        fid: None,
        clip: None,
        sweep: None,
        failed: None,
        provenance: Provenance {
            command: run.command.clone(),
            config_path: run.config_path.display().to_string(),
            config: cfg.text.clone(),
            text2ct_version: env!("CARGO_PKG_VERSION").into(),
            git_commit,
            git_dirty,
            started_utc: utc_string(started),
            machine: Machine::detect(),
            sections: Vec::new(),
            wall_seconds: 0.0,
        },
    };
    let mut failure: Option<BenchError> = None;
    for section in cfg.sections() {
        log(section, "running");
        let t0 = Instant::now();
        let r: Result<()> = match section {
            "fid" => cfg.fid.as_ref().map_or(Ok(()), |s| run_fid(s, dev, log).map(|t| rep.fid = Some(t))),
            "clip" => cfg.clip.as_ref().map_or(Ok(()), |s| {
                run_clip_eval(&s.config(), dev, &mut |m| log("clip", m)).map(|c| rep.clip = Some(c))
            }),
            "sweep" => cfg.sweep.as_ref().map_or(Ok(()), |s| {
                let out = s.out.clone().unwrap_or_else(|| run.out.join("sweep"));
                let mut cb = |e: SweepEvent| match e {
                    SweepEvent::Scale { w, index, total } => log("sweep", &format!("w = {w} ({}/{total})", index + 1)),
                    SweepEvent::Row(r) => log(
                        "sweep",
                        &format!("w = {}: FID 3D {}, FID 2.5D {}", r.guidance, fmt_opt(r.fid_3d), fmt_opt(r.fid_25d)),
                    ),
                    _ => {}
                };
                run_sweep(&s.config, &out, dev, &mut cb).map(|r| rep.sweep = Some(r))
            }),
            _ => Ok(()),
        };
        let ok = r.is_ok();
        rep.provenance.sections.push(SectionTime { section: section.into(), seconds: t0.elapsed().as_secs_f64(), ok });
        if let Err(e) = r {
            let e = match e {
                BenchError::Section { .. } => e,
                other => section_err(section, other),
            };
            rep.failed = Some(Failure { section: section.into(), error: e.to_string() });
            failure = Some(e);
            break;
        }
    }
    rep.provenance.wall_seconds = t_all.elapsed().as_secs_f64();
    write_report(&rep, run.out)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(rep),
    }
}

/// `report.json`, `report.md` and the PNGs into `dir`.
pub fn write_report(rep: &EvalReport, dir: &Path) -> Result<()> {
    let mut pngs = Vec::new();
    if let Some(s) = &rep.sweep {
        if panels_png(&s.panels(), "guidance scale w", &dir.join("figure3_guidance.png"))? {
            pngs.push("figure3_guidance.png");
        }
    }
    write_atomic(&dir.join("report.json"), &json_bytes(rep)?)?;
    write_atomic(&dir.join("report.md"), rep.to_markdown(&pngs).as_bytes())?;
    Ok(())
}

/// Three decimals as the paper prints; small values (tiny sets, random backbones) keep three
/// significant digits instead of printing as 0.000; rounding noise around 0 prints as 0.
pub fn f3(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() < 1e-9 => "0".into(),
        Some(x) if x.abs() < 0.01 => format!("{x:.2e}"),
        Some(x) => format!("{x:.3}"),
    }
}

fn backbone_lines(s: &mut String, bs: &[BackboneInfo]) {
    for b in bs {
        s.push_str(&format!(
            "- {} backbone `{}` ({} layout, {} features), weights `{}`, SHA-256 `{}`\n",
            b.kind.to_uppercase(),
            b.name,
            b.layout,
            b.feature_dim,
            b.weights,
            b.weights_sha256
        ));
    }
}

impl EvalReport {
    /// Table 2: FID 2.5D per plane and mean, FID 3D.
    pub fn table2(t: &FidTable) -> String {
        let mut s = String::from(
            "| Method | Axial ↓ | Coronal ↓ | Sagittal ↓ | Avg. ↓ | FID 3D ↓ |\n|---|---|---|---|---|---|\n",
        );
        for r in &t.rows {
            let plane = |name: &str| r.scores.planes.iter().find(|p| p.plane.name() == name).map(|p| p.fid);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.name,
                f3(plane("axial")),
                f3(plane("coronal")),
                f3(plane("sagittal")),
                f3(r.scores.fid_25d),
                f3(r.scores.fid_3d)
            ));
        }
        s
    }

    /// Table 4: zero-shot (macro averages), volume-to-volume MAP@K, report-to-volume Recall@K;
    /// one row per prompt style and the random baselines.
    pub fn table4(c: &ClipEvalReport, name: &str) -> String {
        let vv = &c.volume_to_volume;
        let rv = &c.report_to_volume;
        let mut s = String::from("| Methods | Acc. | AUC | Pre. |");
        let mut sep = String::from("|---|---|---|---|");
        for k in &vv.ks {
            s.push_str(&format!(" MAP@{k} |"));
            sep.push_str("---|");
        }
        for k in &rv.ks {
            s.push_str(&format!(" Re@{k} |"));
            sep.push_str("---|");
        }
        s.push('\n');
        s.push_str(&sep);
        s.push('\n');
        let retrieval = |s: &mut String, map: &[Option<f64>], rec: &[f64]| {
            for m in map {
                s.push_str(&format!(" {} |", f3(*m)));
            }
            for r in rec {
                s.push_str(&format!(" {r:.3} |"));
            }
            s.push('\n');
        };
        for z in &c.zero_shot {
            s.push_str(&format!(
                "| {name} ({}) | {} | {} | {} |",
                z.style.name(),
                f3(z.accuracy.macro_avg),
                f3(z.auc.macro_avg),
                f3(z.precision.macro_avg)
            ));
            retrieval(&mut s, &vv.map, &rv.recall);
        }
        s.push_str("| random baseline | – | 0.500 | – |");
        retrieval(&mut s, &vv.map_random, &rv.random);
        s
    }

    /// The whole report as Markdown; `pngs` are the figure files written beside it.
    pub fn to_markdown(&self, pngs: &[&str]) -> String {
        let mut s = format!("# {}\n\n", self.title);
        s.push_str(
            "Tables in the shapes of the Text2CT paper (Molino, Caruso et al., 2025). On phantoms the numbers \
             measure this code on procedural data, not performance on patients.\n\n",
        );
        if let Some(f) = &self.failed {
            s.push_str(&format!(
                "> **Section [{}] failed:** {}\n>\n> The sections before it are below.\n\n",
                f.section, f.error
            ));
        }
        if let Some(t) = &self.fid {
            s.push_str("## Table 2 — image fidelity (FID)\n\n");
            s.push_str(&Self::table2(t));
            s.push_str(&format!(
                "\nReal set `{}` ({} volumes, {}). Lower is better; values are comparable only within one \
                 backbone and weights hash.\n\n",
                t.real.path, t.real.n_volumes, t.real.kind
            ));
            backbone_lines(&mut s, &t.backbones);
            for r in &t.rows {
                s.push_str(&format!("- {}: `{}` ({} volumes)\n", r.name, r.set.path, r.set.n_volumes));
            }
            s.push_str(&format!("- protocol: `{}`\n\n", t.protocol));
        }
        if let Some(c) = &self.clip {
            s.push_str("## Table 4 — vision-language alignment (3D-CLIP)\n\n");
            s.push_str(&Self::table4(c, "Ours"));
            s.push_str(&format!(
                "\n{} volumes; zero-shot accuracy, AUC and precision are macro averages over the 18 \
                 abnormalities (weighted averages and per-class values in `report.json`); protocol `{}` \
                 (docs/evaluation/clip.md).\n\n",
                c.n_volumes, c.protocol
            ));
            for (k, v) in &c.meta {
                s.push_str(&format!("- {k}: {v}\n"));
            }
            s.push('\n');
        }
        if let Some(w) = &self.sweep {
            s.push_str("## Figure 3 — guidance scale\n\n");
            if pngs.contains(&"figure3_guidance.png") {
                s.push_str("![FID against the guidance scale](figure3_guidance.png)\n\n");
            }
            s.push_str(&w.table());
            s.push_str(&format!(
                "\nModel `{}` (hash `{}`), {} reports × {} volume(s) per scale, {} {} steps, output {:?}; every \
                 scale starts from the same noise. Real set `{}` ({} volumes). Volumes under the sweep's \
                 folder (`w*/`).\n\n",
                w.model,
                short(&w.model_hash),
                w.n_reports,
                w.count_per_report,
                w.sampler,
                w.steps,
                w.size,
                w.real.path,
                w.real.n_volumes
            ));
            backbone_lines(&mut s, &w.backbones);
            s.push('\n');
        }
        let p = &self.provenance;
        s.push_str("## Provenance\n\n");
        s.push_str(&format!("- command: `{}`\n", p.command.join(" ")));
        s.push_str(&format!(
            "- text2ct {}, git commit {}{}\n",
            p.text2ct_version,
            p.git_commit.as_deref().unwrap_or("unknown"),
            match p.git_dirty {
                Some(true) => " (with uncommitted changes)",
                _ => "",
            }
        ));
        s.push_str(&format!(
            "- started {} UTC, wall time {:.1} s\n",
            p.started_utc.trim_end_matches('Z'),
            p.wall_seconds
        ));
        let m = &p.machine;
        s.push_str(&format!(
            "- machine: {} {}, {} threads, CPU {}, memory {}\n",
            m.os,
            m.arch,
            m.threads,
            m.cpu_model.as_deref().unwrap_or("unknown"),
            m.memory_gib.map_or("unknown".into(), |g| format!("{g} GiB"))
        ));
        s.push_str("\n| section | wall time (s) | status |\n|---|---|---|\n");
        for t in &p.sections {
            s.push_str(&format!("| [{}] | {:.1} | {} |\n", t.section, t.seconds, if t.ok { "ok" } else { "failed" }));
        }
        s.push_str(&format!(
            "\nConfig (`{}`, copied to `config.toml`):\n\n```toml\n{}\n```\n",
            p.config_path,
            p.config.trim_end()
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_string(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn table_numbers() {
        assert_eq!(f3(Some(3.6481)), "3.648");
        assert_eq!(f3(Some(0.003)), "3.00e-3");
        assert_eq!(f3(Some(-1e-13)), "0");
        assert_eq!(f3(None), "–");
    }

    #[test]
    fn the_phantom_config_parses_and_the_sweep_inherits_fid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/eval_phantom.toml");
        let c = EvalConfig::from_file(&p).unwrap();
        assert_eq!(c.sections(), vec!["fid", "clip", "sweep"]);
        let sw = c.sweep.unwrap();
        assert_eq!(sw.config.real, PathBuf::from("/tmp/s2/ph_valid"));
        assert_eq!(sw.config.guidance, crate::sweep::PAPER_GUIDANCE.to_vec());
        assert_eq!(sw.config.fid.backbone_3d.as_ref().map(|b| b.name.as_str()), Some("ctnet"));
        assert_eq!(sw.config.fid.size, Some([64, 64, 32]));
        assert_eq!(sw.out, Some(PathBuf::from("runs/eval_phantom_sweep")));
        let e = EvalConfig::from_toml_str("[ablation]\nx = 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown section [ablation]"), "{e}");
        let e = EvalConfig::from_toml_str("[clip]\nmodel = \"m\"\n").unwrap_err().to_string();
        assert!(e.contains("section [clip]") && e.contains("manifest"), "{e}");
    }
}
