//! The run folder (`--out` of pretraining, fine-tuning and the augmented linear probe): what a
//! run may find in it, and what it does to it when it starts. Shared by every task.
//!
//! PyTorch counterpart: `--output_dir` of `main_pretrain.py` / `main_finetune.py`, which writes
//! into whatever is there (`os.makedirs(exist_ok=True)`, `log.txt` appended, `checkpoint-N.pth`
//! replaced); here a used folder is refused instead, as Hugging Face's Trainer refuses a
//! non-empty `output_dir` without `overwrite_output_dir`.
//!
//! The rules:
//! - A run's own files are `config.json`, `metrics.jsonl`, `eval.jsonl`, `results.json`,
//!   `best.safetensors` and `checkpoint-N[.state].safetensors`. Other files in the folder are
//!   never touched.
//! - A fresh run (no `--resume`) refuses a folder that holds any of them, naming them and
//!   `--resume auto` or a new `--out`.
//! - A resumed run refuses a folder whose `config.json` is not this kind of run's (a fine-tuning
//!   resumed in a pretraining folder would prune the pretraining checkpoints), and one that holds
//!   checkpoints newer than the one it resumes from (two histories in one folder; pruning by step
//!   would delete the new one).
//! - `--out` is never the dataset folder or inside it.
//! - Nothing is created or written until every check has passed and the checkpoint (if any) has
//!   loaded: then the folder is made, locked (one run at a time: a second run into the same folder
//!   is refused), the leftovers of an interrupted save are removed (and reported), the metrics of
//!   steps after the resumed checkpoint are dropped (they will be computed again), and
//!   `config.json` is written.

use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint::{list_checkpoints, orphan_state_step, step_of_name, step_of_state_name};
use crate::error::TrainError;
use crate::run::Resume;

/// A run's own files besides its checkpoints.
pub const RUN_FILES: &[&str] = &[
    "config.json",
    "metrics.jsonl",
    "eval.jsonl",
    "results.json",
    "best.safetensors",
];

/// What kind of run uses a folder: the type its `config.json` must parse as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `mae pretrain` ([`crate::PretrainConfig`]).
    Pretrain,
    /// `mae finetune` ([`crate::config::FinetuneConfig`]).
    Finetune,
    /// `mae linprobe --out` ([`crate::probing::LinprobeConfig`]).
    Linprobe,
}

impl RunKind {
    /// What the kind is called in messages (`pretraining`, `fine-tuning`, `linear-probe`).
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Pretrain => "pretraining",
            RunKind::Finetune => "fine-tuning",
            RunKind::Linprobe => "linear-probe",
        }
    }

    /// Whether `json` is this kind's configuration.
    fn parses(self, json: &[u8]) -> Result<(), String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if let Some(map) = value.as_object_mut() {
            map.remove(BUILD_KEY);
        }
        let r = match self {
            RunKind::Pretrain => serde_json::from_value::<crate::PretrainConfig>(value).map(|_| ()),
            RunKind::Finetune => {
                serde_json::from_value::<crate::config::FinetuneConfig>(value).map(|_| ())
            }
            RunKind::Linprobe => {
                serde_json::from_value::<crate::probing::LinprobeConfig>(value).map(|_| ())
            }
        };
        r.map_err(|e| e.to_string())
    }
}

/// The run's files found in `dir` (checkpoints first, newest first), by name.
fn run_files(dir: &Path) -> Result<Vec<String>, TrainError> {
    let mut found: Vec<String> = list_checkpoints(dir)?
        .into_iter()
        .filter_map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for name in RUN_FILES {
        if fs::symlink_metadata(dir.join(name)).is_ok() {
            found.push(name.to_string());
        }
    }
    Ok(found)
}

/// Checks `out` for a run of `kind` that resumes as `resume`, reading `data` (whose folder `out`
/// must stay out of); writes nothing.
pub fn check(out: &Path, kind: RunKind, resume: &Resume, data: &Path) -> Result<(), TrainError> {
    let (o, d) = (
        mae_data::outdir::resolved(out),
        mae_data::outdir::resolved(data),
    );
    if o.starts_with(&d) {
        return Err(TrainError::Config(format!(
            "--out {} is inside the dataset folder {}: give a run folder of its own",
            out.display(),
            data.display()
        )));
    }
    if let Ok(meta) = fs::metadata(out) {
        if !meta.is_dir() {
            return Err(TrainError::Config(format!(
                "--out {} exists and is not a folder",
                out.display()
            )));
        }
    }
    let found = run_files(out)?;
    if found.is_empty() {
        return Ok(());
    }
    if *resume == Resume::No {
        let shown: Vec<&str> = found.iter().take(4).map(String::as_str).collect();
        return Err(TrainError::Config(format!(
            "{} already holds a run ({}{}): continue it with --resume auto, or give a new --out",
            out.display(),
            shown.join(", "),
            if found.len() > 4 { ", ..." } else { "" }
        )));
    }
    let config = out.join("config.json");
    if let Ok(bytes) = fs::read(&config) {
        kind.parses(&bytes).map_err(|e| {
            TrainError::Config(format!(
                "{}: not the configuration of a {} run ({e}); give a new --out",
                config.display(),
                kind.name()
            ))
        })?;
    }
    Ok(())
}

/// A resumed run at `step`: refuses when `out` holds checkpoints past it that loaded (or were
/// not tried): resuming an older checkpoint beside newer ones would leave two histories in one
/// folder. `failed` are the ones `--resume auto` could not load (kept, and left out of pruning
/// until the run passes them).
pub fn check_no_newer(out: &Path, step: u64, failed: &[PathBuf]) -> Result<(), TrainError> {
    let newer: Vec<String> = list_checkpoints(out)?
        .into_iter()
        .filter(|(s, p)| *s > step && !failed.contains(p))
        .map(|(_, p)| p.display().to_string())
        .collect();
    if newer.is_empty() {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "{} holds checkpoints newer than step {step} ({}): resume the newest with --resume auto, \
         or resume into a new --out",
        out.display(),
        newer.join(", ")
    )))
}

/// A run folder in use: made, locked and tidied by [`begin`]; the lock is held until it drops.
pub struct RunDir {
    _lock: Option<fs::File>,
    /// What [`begin`] removed or dropped, one line each, for the run's log.
    pub notes: Vec<String>,
}

/// The configuration a run writes to its folder (`config.json`) and into its checkpoints.
pub fn config_json(config: &impl serde::Serialize) -> Result<String, TrainError> {
    let bad = |e: serde_json::Error| TrainError::Config(e.to_string());
    let mut value = serde_json::to_value(config).map_err(bad)?;
    if let Some(map) = value.as_object_mut() {
        map.insert(BUILD_KEY.into(), build_json());
    }
    serde_json::to_string_pretty(&value).map_err(bad)
}

/// The key of a run's JSON files (`config.json`, `results.json`) that records the build that
/// wrote them: `{"version": "0.1.0", "commit": "566ae2d7c1a0"}`.
pub const BUILD_KEY: &str = "mae_rs";

/// The value of [`BUILD_KEY`]: this build's version and commit.
pub fn build_json() -> serde_json::Value {
    serde_json::json!({
        "version": crate::build::VERSION,
        "commit": crate::build::COMMIT,
    })
}

/// Writes a run's summary to `out/results.json` (atomically).
pub fn write_results(out: &Path, summary: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = config_json(summary)?;
    Ok(mae_core::weights::write_atomic(
        &out.join("results.json"),
        text.as_bytes(),
    )?)
}

/// Starts using `out` for a run resumed at `step` (0: fresh) with `config_json`; on rank 0
/// (`main`) only: other ranks write nothing and get an empty [`RunDir`].
pub fn begin(out: &Path, step: u64, config_json: &str, main: bool) -> Result<RunDir, TrainError> {
    if !main {
        return Ok(RunDir {
            _lock: None,
            notes: Vec::new(),
        });
    }
    fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let lock_path = out.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| TrainError::io(&lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(TrainError::Config(format!(
            "{}: another mae run is using this folder; wait for it, or give another --out",
            out.display()
        )));
    }
    let mut notes = remove_leftovers(out)?;
    for name in ["metrics.jsonl", "eval.jsonl"] {
        if let Some(n) = drop_lines_after(&out.join(name), step)? {
            notes.push(n);
        }
    }
    mae_core::weights::write_atomic(&out.join("config.json"), config_json.as_bytes())?;
    Ok(RunDir {
        _lock: Some(lock),
        notes,
    })
}

/// Removes what an interrupted save leaves: the temporary files of our writes
/// (`.checkpoint-7.safetensors.tmp`, `.config.json.XXXXXX.tmp`, ...) and state files whose model
/// file is missing (the state is written first). Returns one note per file removed.
pub fn remove_leftovers(out: &Path) -> Result<Vec<String>, TrainError> {
    let mut notes = Vec::new();
    let entries = fs::read_dir(out).map_err(|e| TrainError::io(out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ours_tmp = is_our_tmp(&name);
        let orphan_state = orphan_state_step(&path).is_some();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && (ours_tmp || orphan_state) {
            fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
            notes.push(format!(
                "removed {}, left by an interrupted save",
                path.display()
            ));
        }
    }
    notes.sort();
    Ok(notes)
}

/// `.NAME.tmp` (older writes) or `.NAME.XXXXXX.tmp` of one of the run's files.
fn is_our_tmp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    is_run_file(rest) || rest.rsplit_once('.').is_some_and(|(n, _)| is_run_file(n))
}

fn is_run_file(name: &str) -> bool {
    let path = Path::new(name);
    RUN_FILES.contains(&name) || step_of_name(path).or(step_of_state_name(path)).is_some()
}

/// Keeps the lines of a JSON-lines log whose `step` is at most `step` (and lines without one);
/// returns a note when some were dropped.
fn drop_lines_after(path: &Path, step: u64) -> Result<Option<String>, TrainError> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(None);
    };
    let after = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step")?.as_u64())
            .is_some_and(|s| s > step)
    };
    let kept: Vec<&str> = text.lines().filter(|l| !after(l)).collect();
    let dropped = text.lines().count() - kept.len();
    if dropped == 0 {
        return Ok(None);
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    mae_core::weights::write_atomic(path, out.as_bytes())?;
    Ok(Some(format!(
        "{}: dropped {dropped} line(s) of steps after {step}, which this run computes again",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_an_interrupted_save_go_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for name in [
            ".checkpoint-7.safetensors.tmp",
            ".config.json.a1B2c3.tmp",
            "checkpoint-5.state.safetensors",
            "checkpoint-6.state.safetensors",
            "checkpoint-6.safetensors",
            ".notes.txt.tmp",
            "notes.tmp",
        ] {
            fs::write(d.join(name), "x").expect("file");
        }
        let notes = remove_leftovers(d).expect("cleaned");
        assert_eq!(notes.len(), 3, "{notes:?}");
        let mut left: Vec<String> = fs::read_dir(d)
            .expect("listed")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".notes.txt.tmp",
                "checkpoint-6.safetensors",
                "checkpoint-6.state.safetensors",
                "notes.tmp"
            ]
        );
    }

    #[test]
    fn metrics_past_the_resumed_step_are_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n").expect("file");
        let note = drop_lines_after(&path, 2).expect("rewritten");
        assert!(note.is_some_and(|n| n.contains("1 line")));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "{\"step\":1}\n{\"step\":2}\n"
        );
        assert_eq!(drop_lines_after(&path, 2).expect("unchanged"), None);
    }
}
