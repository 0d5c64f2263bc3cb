//! How much memory a job may use, and the refusal of a job that would not fit.
//!
//! A command that can be asked for absurd sizes (`generate --size`, `eval fid --size`) estimates
//! its peak memory first (the estimate lives next to the code it models, e.g.
//! `text2ct_generate::memory`) and calls [`check_fits`] before it allocates anything: a job that
//! cannot fit is refused with its estimate instead of being killed by the kernel or aborting on
//! an allocation minutes later.
//!
//! The memory available ([`available`]) is, in this order:
//! - `TEXT2CT_MEMORY_LIMIT` when set (bytes, or with a binary unit: `512M`, `8G`, `8GiB`, `1.5T`),
//!   e.g. to allow a job the kernel would serve from swap, or to keep one small on a shared machine;
//! - else the smaller of `MemAvailable` in `/proc/meminfo` and what the process's cgroup still
//!   allows (`memory.max − memory.current` under cgroup v2, `memory.limit_in_bytes −
//!   memory.usage_in_bytes` under v1, read at the mounted root `/sys/fs/cgroup`, which is the
//!   process's own group in a container), plus what the process already holds (`VmRSS`): the
//!   estimates are of a job's whole peak, weights and runtime included, and the caller may have
//!   loaded those already;
//! - unknown elsewhere (not Linux): then nothing is refused.

use std::path::Path;

use crate::error::{IoError, Result};

/// The environment variable that overrides the memory available to a job.
pub const ENV: &str = "TEXT2CT_MEMORY_LIMIT";

/// The memory a job may use, and where that number came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: u64,
    /// E.g. "MemAvailable in /proc/meminfo" or "TEXT2CT_MEMORY_LIMIT".
    pub source: String,
}

/// `n` bytes for people: "512 B", "3.2 MiB", "17.0 GiB", "1.1 PiB".
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parse a byte count: a whole number of bytes, or a number with a binary unit (`K`, `M`, `G`,
/// `T`, optionally followed by `iB` or `B`; case-insensitive), e.g. `8G`, `8GiB`, `1.5t`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let bad = || IoError::invalid(format!("{s:?} is not a byte count (e.g. 8589934592, 8G or 8GiB)"));
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let stem = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match stem.chars().last() {
        Some('k') => (&stem[..stem.len() - 1], 1u64 << 10),
        Some('m') => (&stem[..stem.len() - 1], 1 << 20),
        Some('g') => (&stem[..stem.len() - 1], 1 << 30),
        Some('t') => (&stem[..stem.len() - 1], 1 << 40),
        _ => (stem, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A `kB` field of `/proc/meminfo`-style text, in bytes.
fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let kb: u64 = line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kb.checked_mul(1024)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What the cgroup still allows (`None`: no limit or no cgroup found).
fn cgroup_room(root: &Path) -> Option<(u64, &'static str)> {
    // cgroup v2: "max" (no limit) does not parse, so it gives None.
    if let (Some(max), Some(cur)) = (read_u64(&root.join("memory.max")), read_u64(&root.join("memory.current"))) {
        return Some((max.saturating_sub(cur), "the cgroup's memory.max"));
    }
    let v1 = root.join("memory");
    let (max, cur) = (read_u64(&v1.join("memory.limit_in_bytes"))?, read_u64(&v1.join("memory.usage_in_bytes"))?);
    // v1 writes "no limit" as a page-rounded i64::MAX.
    (max < 1 << 60).then(|| (max.saturating_sub(cur), "the cgroup's memory.limit_in_bytes"))
}

/// The memory a job may use now (see the module documentation); `Ok(None)` where it cannot be
/// known. An unparseable `TEXT2CT_MEMORY_LIMIT` is an error, not ignored.
pub fn available() -> Result<Option<Available>> {
    if let Some(v) = std::env::var_os(ENV) {
        let v = v.to_string_lossy();
        let bytes = parse_bytes(&v).map_err(|e| IoError::invalid(format!("{ENV}: {e}")))?;
        return Ok(Some(Available { bytes, source: ENV.into() }));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let mem = meminfo
        .as_deref()
        .and_then(|t| meminfo_field(t, "MemAvailable"))
        .map(|b| Available { bytes: b, source: "MemAvailable in /proc/meminfo".into() });
    let cg = cgroup_room(Path::new("/sys/fs/cgroup")).map(|(b, s)| Available { bytes: b, source: s.into() });
    let own = std::fs::read_to_string("/proc/self/status").ok().and_then(|t| meminfo_field(&t, "VmRSS")).unwrap_or(0);
    Ok(match (mem, cg) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    }
    .map(|a| Available {
        bytes: a.bytes.saturating_add(own),
        source: format!("{} plus the {} this process holds", a.source, format_bytes(own)),
    }))
}

/// Refuse a job whose estimated peak (`estimate` bytes) is above the memory available;
/// `what` names the job and its size, e.g. "generating 1024 x 1024 x 1024 (--size)". The
/// message gives the estimate, the memory available and how to override it.
pub fn check_fits(what: &str, estimate: u64) -> Result<()> {
    check_fits_in(what, estimate, available()?)
}

/// The memory a job may use with a user's cap (`--max-memory`): the smaller of `cap` and what
/// [`available`] finds.
pub fn budget(cap: Option<u64>) -> Result<Option<Available>> {
    let avail = available()?;
    Ok(match (cap, avail) {
        (Some(c), Some(a)) if a.bytes <= c => Some(a),
        (Some(c), _) => Some(Available { bytes: c, source: "--max-memory".into() }),
        (None, a) => a,
    })
}

/// [`check_fits`] against a given budget (`None`: unknown, nothing is refused).
pub fn check_fits_in(what: &str, estimate: u64, budget: Option<Available>) -> Result<()> {
    match budget {
        Some(a) if estimate > a.bytes => Err(IoError::invalid(format!(
            "{what} needs about {} of memory (estimated), but {} is available ({}); use a smaller size, or set \
             {ENV} (e.g. {ENV}=64G) if you know it fits",
            format_bytes(estimate),
            format_bytes(a.bytes),
            a.source
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("1234").unwrap(), 1234);
        assert_eq!(parse_bytes("8G").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("8gb").unwrap(), 8 << 30);
        assert_eq!(parse_bytes(" 512M ").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5T").unwrap(), 3 << 39);
        for bad in ["", "G", "-1G", "eight", "1e30", "8X", "nan"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn meminfo_and_cgroup_files_are_read() {
        let t = "MemTotal:       24683772 kB\nMemFree: 1 kB\nMemAvailable:   23055204 kB\n";
        assert_eq!(meminfo_field(t, "MemAvailable"), Some(23055204 * 1024));
        assert_eq!(meminfo_field(t, "Mem"), None);
        let d = std::env::temp_dir().join(format!("text2ct-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("memory")).unwrap();
        assert_eq!(cgroup_room(&d), None);
        std::fs::write(d.join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(d.join("memory/memory.usage_in_bytes"), "1000\n").unwrap();
        assert_eq!(cgroup_room(&d), None, "v1 without a limit");
        std::fs::write(d.join("memory/memory.limit_in_bytes"), "5000\n").unwrap();
        assert_eq!(cgroup_room(&d).unwrap().0, 4000);
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("memory.current"), "10\n").unwrap();
        assert_eq!(cgroup_room(&d).unwrap().0, 4000, "v2 without a limit falls back to v1");
        std::fs::write(d.join("memory.max"), "110\n").unwrap();
        assert_eq!(cgroup_room(&d), Some((100, "the cgroup's memory.max")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
