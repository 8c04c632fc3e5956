//! `validate --shard I/N` and the merge of its shards: the (case, kernel) pairs of one
//! validation split into N interleaved slices, so that the catalogue × kernels × `--repeat`
//! runs as an array of jobs (Slurm, say), and `numasim merge` joins the slices into one
//! validation. The merge copies the shards' kernel runs into one directory and judges them
//! again without booting (the `--reuse` path): the sim is deterministic, so its rows are the
//! shards' rows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Args, Verdict};
use crate::Failure;

/// What a validation was asked to do: enough to run it again, or the rest of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub scenario: Option<String>,
    pub all: bool,
    pub kernels: Vec<String>,
    pub set: Vec<String>,
    pub repeat: u32,
    pub trace: bool,
}

/// The I-th (1-based) of N interleaved slices of a validation's (case, kernel) pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard, Failure> {
        let (index, count) = crate::sweep::parse_shard(s)?;
        Ok(Shard { index, count })
    }

    /// Whether pair `unit` (case index × kernels + kernel index) is this slice's.
    pub fn keeps(self, unit: usize) -> bool {
        unit % self.count == self.index - 1
    }

    pub fn label(self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// `shard-I-of-N`, beside the whole validation's directory.
    pub fn dir_name(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

/// The part of a shard's validate.json the merge reads.
#[derive(Deserialize)]
struct ShardManifest {
    request: Request,
    shard: Option<String>,
    cases: Vec<ShardCase>,
    #[serde(default)]
    skipped: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct ShardCase {
    case: String,
    outcomes: Vec<ShardOutcome>,
}

#[derive(Deserialize)]
struct ShardOutcome {
    kernel: String,
    /// Relative to the shard's directory.
    dir: String,
}

/// `numasim merge` over validate shards: every shard of one request, each once, together
/// holding every (case, kernel) pair; then one validation of them all in `out`.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Verdict, Failure> {
    let manifests = dirs.iter().map(|d| read(d)).collect::<Result<Vec<_>, _>>()?;
    let request = manifests[0].request.clone();
    for (dir, m) in dirs.iter().zip(&manifests) {
        if m.request != request {
            return Err(Failure::Input(format!(
                "{} is a shard of a different validation than {} ({:?} vs {:?})",
                dir.display(),
                dirs[0].display(),
                m.request,
                request
            )));
        }
        if m.shard.is_none() {
            return Err(Failure::Input(format!("{} is a whole validation, not a shard of one", dir.display())));
        }
    }
    let mut units: Vec<(&String, &String, &Path, &String)> = Vec::new();
    for (dir, m) in dirs.iter().zip(&manifests) {
        for (case, o) in m.cases.iter().flat_map(|c| c.outcomes.iter().map(move |o| (&c.case, o))) {
            if units.iter().any(|&(c, k, _, _)| (c, k) == (case, &o.kernel)) {
                return Err(Failure::Input(format!(
                    "{case} on {} is in two shards (the same shard given twice?): {}",
                    o.kernel,
                    dir.display()
                )));
            }
            units.push((case, &o.kernel, dir, &o.dir));
        }
    }
    let cases = if request.all { workloads::validation::CASES.len() } else { 1 };
    // Every shard skips the same pairs: the kernel cannot run the case.
    let skipped = manifests[0].skipped.len();
    let want = cases * request.kernels.len() - skipped.min(cases * request.kernels.len());
    if units.len() != want {
        return Err(Failure::Input(format!(
            "the shards hold {} of the validation's {want} (case, kernel) pairs: run the missing shards \
             (each prints its own as --shard I/N)",
            units.len()
        )));
    }
    for (_, _, dir, rel) in units {
        copy_tree(&dir.join(rel), &out.join(rel))?;
    }
    let args = Args {
        scenario: request.scenario,
        all: request.all,
        kernels: request.kernels,
        set: request.set,
        out: Some(out.to_path_buf()),
        reuse: true,
        trace: request.trace,
        repeat: request.repeat,
        retries: 0,
        report: None,
        shard: None,
        boot: false,
    };
    super::run(args)
}

fn read(dir: &Path) -> Result<ShardManifest, Failure> {
    let path = dir.join(results::manifest::VALIDATE);
    let text = std::fs::read_to_string(&path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::Input(format!("{}: not the manifest of a validate shard ({e})", path.display())))
}

/// A shard's case directory copied into the merged one; a directory already there is left
/// to the `--reuse` check, which refuses a run whose files changed.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Failure> {
    let io = |p: &Path, e: std::io::Error| Failure::Io(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| io(&src, e))?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| io(&src, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// N slices take every pair exactly once, whatever N.
    #[test]
    fn slices_partition_the_pairs() {
        for count in 1..=7 {
            for unit in 0..40 {
                let owners = (1..=count).filter(|&index| Shard { index, count }.keeps(unit)).count();
                assert_eq!(owners, 1, "pair {unit} of {count} slices");
            }
        }
        assert!(Shard::parse("0/3").is_err() && Shard::parse("4/3").is_err() && Shard::parse("x").is_err());
        assert_eq!(Shard::parse("2/3").unwrap().dir_name(), "shard-2-of-3");
    }
}
