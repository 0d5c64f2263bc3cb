//! What to generate: prompts from the command line or a reports CSV, split deterministically
//! into shards (`--shard I/N`) so that array jobs (Slurm, Kubernetes indexed Jobs) need no
//! coordination, and one seed per volume that does not depend on the sharding.

use std::path::Path;

use text2ct_data::csvfile::CsvTable;
use text2ct_data::layout::report_text;

use crate::error::{GenerateError, Result};
use crate::limits::check_jobs;

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

/// The seed of sample `k` of row `r`: `base + r * count + k`, the same whatever the sharding.
/// Written into every output's file name and metadata. [`JobList`] checks that no seed of a run
/// passes `u64::MAX` ([`crate::limits::check_jobs`]); here the sum wraps.
pub fn seed_for(base: u64, row: usize, sample: usize, count: usize) -> u64 {
    base.wrapping_add((row as u64).wrapping_mul(count as u64)).wrapping_add(sample as u64)
}

/// One row (prompt) of a run.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    id: String,
    prompt: String,
    row: usize,
}

/// The jobs of one run: each prompt once, the volumes per prompt made on demand ([`JobList::iter`]),
/// so that a large count costs nothing until its volumes are generated. Made by
/// [`JobList::for_prompt`] / [`JobList::from_csv`], which check the count and the seeds
/// ([`crate::limits::check_jobs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct JobList {
    rows: Vec<Row>,
    count: usize,
    base_seed: u64,
    len: usize,
}

impl JobList {
    /// `count` volumes of one prompt given on the command line.
    pub fn for_prompt(prompt: &str, count: usize, base_seed: u64) -> Result<JobList> {
        if prompt.trim().is_empty() {
            return Err(GenerateError::Prompts("the prompt is empty".into()));
        }
        let len = check_jobs(1, 1, count, base_seed)?;
        Ok(JobList {
            rows: vec![Row { id: "prompt".into(), prompt: prompt.to_string(), row: 0 }],
            count,
            base_seed,
            len,
        })
    }

    /// Jobs from a CSV: CT-RATE's reports CSV (`VolumeName`, `Findings_EN`, `Impressions_EN`; the
    /// prompt is `"Findings: … Impression: …"` as the release builds it) or a CSV with a `prompt`
    /// (or `text`) column and an optional `id` column. Only the rows of `shard` are kept.
    pub fn from_csv(path: &Path, count: usize, base_seed: u64, shard: Shard) -> Result<JobList> {
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
                    "needs Findings_EN and Impressions_EN columns (CT-RATE reports) or a prompt/text column".into(),
                ))
            }
        };
        let id_col = col("VolumeName").or(col("id"));
        let mut rows = Vec::new();
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
            rows.push(Row { id, prompt, row });
        }
        if seen.is_empty() {
            return Err(err("no rows".into()));
        }
        let len = check_jobs(seen.len(), rows.len(), count, base_seed).map_err(|e| err(e.to_string()))?;
        Ok(JobList { rows, count, base_seed, len })
    }

    /// The number of volumes of this run (rows of the shard × count).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The jobs in order (row by row, sample by sample), made as they are asked for.
    pub fn iter(&self) -> impl Iterator<Item = Job> + '_ {
        self.rows.iter().flat_map(move |r| {
            (0..self.count).map(move |k| Job {
                id: r.id.clone(),
                prompt: r.prompt.clone(),
                row: r.row,
                sample: k,
                seed: seed_for(self.base_seed, r.row, k, self.count),
            })
        })
    }
}

/// Jobs for one prompt given on the command line, all made at once ([`JobList::for_prompt`]).
pub fn jobs_for_prompt(prompt: &str, count: usize, base_seed: u64) -> Result<Vec<Job>> {
    Ok(JobList::for_prompt(prompt, count, base_seed)?.iter().collect())
}

/// Jobs from a CSV, all made at once ([`JobList::from_csv`]).
pub fn jobs_from_csv(path: &Path, count: usize, base_seed: u64, shard: Shard) -> Result<Vec<Job>> {
    Ok(JobList::from_csv(path, count, base_seed, shard)?.iter().collect())
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

    #[test]
    fn job_lists_are_lazy_and_refuse_wrapping_seeds_and_absurd_counts() {
        // A million volumes of one prompt: the list holds the prompt once.
        let l = JobList::for_prompt("Findings: x", 1_000_000, 7).unwrap();
        assert_eq!(l.len(), 1_000_000);
        let last = l.iter().last().unwrap();
        assert_eq!((last.sample, last.seed), (999_999, 1_000_006));
        assert_eq!(l.iter().take(3).map(|j| j.seed).collect::<Vec<_>>(), vec![7, 8, 9]);
        // More is refused, and so is a count whose job list would overflow (it used to panic
        // with "capacity overflow" or abort allocating).
        for count in [1_000_000_000, usize::MAX] {
            let e = JobList::for_prompt("x", count, 0).unwrap_err().to_string();
            assert!(e.contains("more than one run makes"), "{e}");
        }
        // The last seed may be u64::MAX; one more would wrap to 0 (it used to).
        assert_eq!(JobList::for_prompt("x", 1, u64::MAX).unwrap().iter().next().unwrap().seed, u64::MAX);
        let e = JobList::for_prompt("x", 2, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("seed 18446744073709551615 with count 2"), "{e}");
        // In a CSV every row counts for the seeds, whatever the shard.
        let d = std::env::temp_dir().join(format!("text2ct-joblist-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("r.csv");
        std::fs::write(&p, "id,prompt\na,x\nb,y\nc,z\n").unwrap();
        let shard = Shard::parse("0/3").unwrap();
        let l = JobList::from_csv(&p, 2, u64::MAX - 5, shard).unwrap();
        assert_eq!(l.len(), 2);
        let e = JobList::from_csv(&p, 2, u64::MAX - 4, shard).unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("largest seed"), "{e}");
        assert_eq!(
            jobs_from_csv(&p, 2, 1, Shard::ALL).unwrap(),
            JobList::from_csv(&p, 2, 1, Shard::ALL).unwrap().iter().collect::<Vec<_>>()
        );
        let _ = std::fs::remove_dir_all(&d);
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
