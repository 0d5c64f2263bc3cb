//! Bounds on what one generation run may ask for, checked before any work: the guidance scale
//! and the number of volumes (with their seeds). The memory a volume needs is bounded by
//! [`crate::memory`].

use crate::error::{GenerateError, Result};

/// The largest guidance scale magnitude accepted: `|w| <= 100`.
///
/// Why 100: Text2CT uses w = 5 and its guidance sweep stops at 15 (precision peaks at 5), so 100
/// is far beyond any studied setting while still leaving room to explore. Past it the guided
/// velocity `v_u + w (v_c − v_u)` is dominated by `w` times the small conditional difference:
/// each sampling step then moves the latent by orders of magnitude more than the noise it
/// started from, and the decoder's output saturates to a flat clipped volume (`--guidance 1e30`
/// wrote one, with exit code 0). Negative scales (steering away from the prompt) are allowed
/// within the same bound.
pub const MAX_GUIDANCE: f32 = 100.0;

/// The most volumes one run generates (rows × count per row): 10^6, two orders of magnitude
/// above an evaluation of all 3,039 CT-RATE validation reports at 10 volumes each, and about a
/// year of CPU time at 30 s per small volume. More is split into shards (`--shard`) or runs.
pub const MAX_JOBS: u64 = 1_000_000;

/// A guidance scale `w` that is finite and within ±[`MAX_GUIDANCE`].
pub fn check_guidance(w: f32) -> Result<()> {
    if !w.is_finite() {
        return Err(GenerateError::Invalid(format!("the guidance scale {w} is not finite")));
    }
    if w.abs() > MAX_GUIDANCE {
        // 1e30, not 1000000015047466219876688855040.
        let w = if w.abs() < 1e6 { w.to_string() } else { format!("{w:e}") };
        return Err(GenerateError::Invalid(format!(
            "the guidance scale {w} is outside [-{MAX_GUIDANCE}, {MAX_GUIDANCE}] (Text2CT uses 5, its sweep stops \
             at 15; far larger scales saturate every volume to a flat one)"
        )));
    }
    Ok(())
}

/// `rows` prompts × `count` volumes each (`shard_rows` of them in this run), seeds `base_seed +
/// r · count + k` for every row `r` of all `rows`: at least one volume, at most [`MAX_JOBS`] in
/// this run, and no seed past `u64::MAX` (a seed that wrapped to 0 would silently repeat
/// another job's volume). Returns the number of jobs of this run.
pub fn check_jobs(rows: usize, shard_rows: usize, count: usize, base_seed: u64) -> Result<usize> {
    if count == 0 {
        return Err(GenerateError::Invalid("the count of volumes per prompt must be at least 1".into()));
    }
    let jobs = (shard_rows as u64).checked_mul(count as u64).filter(|&n| n <= MAX_JOBS).ok_or_else(|| {
        GenerateError::Invalid(format!(
            "{shard_rows} prompt(s) x count {count} volume(s) each is more than one run makes (at most \
             {MAX_JOBS} volumes; split it with --shard or into several runs with other seeds)"
        ))
    })?;
    // The largest seed is base + rows * count - 1.
    let span = (rows as u64).checked_mul(count as u64);
    if rows > 0 && span.and_then(|s| base_seed.checked_add(s - 1)).is_none() {
        return Err(GenerateError::Invalid(format!(
            "seed {base_seed} with count {count} for {rows} prompt(s): the seeds (seed + row x count + k) would pass \
             the largest seed {}; use a smaller seed",
            u64::MAX
        )));
    }
    Ok(jobs as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_must_be_finite_and_bounded() {
        for w in [0.0, 1.0, 5.0, -3.0, 100.0, -100.0] {
            check_guidance(w).unwrap();
        }
        for w in [f32::NAN, f32::INFINITY, 1e30, 100.5, -101.0] {
            let e = check_guidance(w).unwrap_err().to_string();
            assert!(e.contains("guidance scale"), "{e}");
        }
        assert!(check_guidance(1e30).unwrap_err().to_string().contains("scale 1e30 is outside"));
    }

    #[test]
    fn jobs_are_bounded_and_seeds_never_wrap() {
        assert_eq!(check_jobs(3, 3, 2, 10).unwrap(), 6);
        assert_eq!(check_jobs(10, 4, 2, 0).unwrap(), 8);
        assert!(check_jobs(1, 1, 0, 0).unwrap_err().to_string().contains("at least 1"));
        for count in [1_000_001, 1_000_000_000, usize::MAX] {
            let e = check_jobs(1, 1, count, 0).unwrap_err().to_string();
            assert!(e.contains("more than one run makes"), "{e}");
        }
        assert_eq!(check_jobs(1, 1, 1_000_000, 0).unwrap(), 1_000_000);
        // The largest seed is allowed, one past it is not.
        assert_eq!(check_jobs(1, 1, 1, u64::MAX).unwrap(), 1);
        assert_eq!(check_jobs(1, 1, 2, u64::MAX - 1).unwrap(), 2);
        let e = check_jobs(1, 1, 2, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("seed 18446744073709551615 with count 2"), "{e}");
        // Seeds count every row of the CSV, not only the shard's.
        assert!(check_jobs(5, 1, 2, u64::MAX - 9).is_ok());
        assert!(check_jobs(5, 1, 2, u64::MAX - 8).is_err());
    }
}
