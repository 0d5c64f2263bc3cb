//! What to generate: prompts from the command line or a reports CSV, split deterministically
//! into shards (`--shard I/N`) so that array jobs (Slurm, Kubernetes indexed Jobs) need no
//! coordination, and one seed per volume that does not depend on the sharding.

use std::path::Path;

use text2ct_data::csvfile::CsvTable;
use text2ct_data::layout::report_text;

use crate::error::{GenerateError, Result};

/// One volume to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Output name stem (from `VolumeName`, an `id` column, or `prompt`).
    pub id: String,
    pub prompt: String,
    /// Row index in the input (0 for `--prompt`).
    pub row: usize,
    /// Sample index for this prompt (0..count).
    pub sample: usize,
    pub seed: u64,
}

impl Job {
    /// `{id}_seed{seed}`: the stem of every file written for this job.
    pub fn stem(&self) -> String {
        format!("{}_seed{}", self.id, self.seed)
    }
}

/// `I/N` with 0 <= I < N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || GenerateError::Invalid(format!("--shard must be I/N with 0 <= I < N (e.g. 0/8), got {s:?}"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Rows are dealt round-robin: row r belongs to shard r mod N.
    pub fn owns(&self, row: usize) -> bool {
        row % self.count == self.index
    }
}

/// The seed of sample `k` of row `r`: `base + r * count + k` (wrapping), the same whatever the
/// sharding. Written into every output's file name and metadata.
pub fn seed_for(base: u64, row: usize, sample: usize, count: usize) -> u64 {
    base.wrapping_add((row as u64).wrapping_mul(count as u64)).wrapping_add(sample as u64)
}

/// Jobs for one prompt given on the command line.
pub fn jobs_for_prompt(prompt: &str, count: usize, base_seed: u64) -> Result<Vec<Job>> {
    if prompt.trim().is_empty() {
        return Err(GenerateError::Prompts("the prompt is empty".into()));
    }
    Ok((0..count)
        .map(|k| Job {
            id: "prompt".into(),
            prompt: prompt.to_string(),
            row: 0,
            sample: k,
            seed: seed_for(base_seed, 0, k, count),
        })
        .collect())
}

/// Jobs from a CSV: CT-RATE's reports CSV (`VolumeName`, `Findings_EN`, `Impressions_EN`; the
/// prompt is `"Findings: … Impression: …"` as the release builds it) or a CSV with a `prompt`
/// (or `text`) column and an optional `id` column. Only the rows of `shard` are kept.
pub fn jobs_from_csv(path: &Path, count: usize, base_seed: u64, shard: Shard) -> Result<Vec<Job>> {
    let err = |m: String| GenerateError::Prompts(format!("{}: {m}", path.display()));
    let table = CsvTable::read(path).map_err(|e| GenerateError::Prompts(e.to_string()))?;
    let col = |n: &str| table.column(n);
    enum Kind {
        Report(usize, usize),
        Prompt(usize),
    }
    let kind = match (col("Findings_EN"), col("Impressions_EN"), col("prompt").or(col("text"))) {
        (Some(f), Some(i), _) => Kind::Report(f, i),
        (_, _, Some(p)) => Kind::Prompt(p),
        _ => {
            return Err(err(
                "needs Findings_EN and Impressions_EN columns (CT-RATE reports) or a prompt/text column".into()
            ))
        }
    };
    let id_col = col("VolumeName").or(col("id"));
    let mut jobs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (row, rec) in table.rows.iter().enumerate() {
        let line = rec.line;
        let get = |i: usize| rec.get(i).trim().to_string();
        let prompt = match kind {
            Kind::Report(f, i) => report_text(&get(f), &get(i)),
            Kind::Prompt(p) => get(p),
        };
        let id = match id_col {
            Some(c) => sanitize(get(c).trim_end_matches(".nii.gz").trim_end_matches(".nii")),
            None => format!("row{row}"),
        };
        if id.is_empty() {
            return Err(err(format!("line {line}: empty id")));
        }
        if !seen.insert(id.clone()) {
            return Err(err(format!("line {line}: duplicate id {id:?}")));
        }
        if !shard.owns(row) {
            continue;
        }
        if prompt.trim().is_empty() {
            return Err(err(format!("line {line}: empty prompt")));
        }
        for k in 0..count {
            jobs.push(Job {
                id: id.clone(),
                prompt: prompt.clone(),
                row,
                sample: k,
                seed: seed_for(base_seed, row, k, count),
            });
        }
    }
    if seen.is_empty() {
        return Err(err("no rows".into()));
    }
    Ok(jobs)
}

/// Keep file names safe: letters, digits, `-`, `_`, `.`.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_rows_and_seeds_do_not_depend_on_them() {
        let d = std::env::temp_dir().join(format!("text2ct-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("r.csv");
        let mut s = String::from("VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n");
        for i in 0..7 {
            s.push_str(&format!("valid_{i}_a_1.nii.gz,c,t,\"Finding {i}, normal.\",Impression {i}.\n"));
        }
        std::fs::write(&p, s).unwrap();
        let all = jobs_from_csv(&p, 2, 10, Shard::ALL).unwrap();
        assert_eq!(all.len(), 14);
        assert_eq!(all[0].prompt, "Findings: Finding 0, normal. Impression: Impression 0.");
        assert_eq!(all[3].stem(), "valid_1_a_1_seed13");
        let mut union = Vec::new();
        for i in 0..3 {
            union.extend(jobs_from_csv(&p, 2, 10, Shard::parse(&format!("{i}/3")).unwrap()).unwrap());
        }
        union.sort_by_key(|j| (j.row, j.sample));
        assert_eq!(union, all);
        let seeds: std::collections::HashSet<u64> = all.iter().map(|j| j.seed).collect();
        assert_eq!(seeds.len(), 14);
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        std::fs::write(&p, "id,prompt\na,hello\nb,\n").unwrap();
        assert!(jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap_err().to_string().contains("empty prompt"));
        std::fs::write(&p, "x,y\n1,2\n").unwrap();
        assert!(jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap_err().to_string().contains("Findings_EN"));
        std::fs::write(&p, "id,prompt\na,x\na,y\n").unwrap();
        assert!(jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap_err().to_string().contains("duplicate"));
        assert!(jobs_for_prompt("  ", 1, 0).is_err());
    }

    /// Issue 21 item 2: an unterminated quote swallowed the next row into the prompt, exit 0.
    #[test]
    fn unterminated_quote_is_refused_with_the_line() {
        let d = std::env::temp_dir().join(format!("text2ct-prompts-quote-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("bad.csv");
        std::fs::write(
            &p,
            "id,prompt\na1,\"Findings: Left pleural effusion.\na2,\"Findings: Cardiomegaly.\"\na3,\"Findings: Nodule.\"\n",
        )
        .unwrap();
        let e = jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap_err().to_string();
        assert!(e.contains("bad.csv") && e.contains("line 3") && e.contains("opened on line 2"), "{e}");
        // A well-formed multi-line quoted prompt is one prompt; messages give its file line.
        std::fs::write(&p, "id,prompt\na1,\"two\nlines\"\na2,\n").unwrap();
        let e = jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap_err().to_string();
        assert!(e.contains("line 4: empty prompt"), "{e}");
        std::fs::write(&p, "id,prompt\na1,\"two\nlines\"\na2,x\n").unwrap();
        let j = jobs_from_csv(&p, 1, 0, Shard::ALL).unwrap();
        assert_eq!(j.iter().map(|j| j.prompt.as_str()).collect::<Vec<_>>(), ["two\nlines", "x"]);
        std::fs::remove_dir_all(&d).ok();
    }
}
