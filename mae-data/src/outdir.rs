//! Where `prepare` may write: the output folder's rules, checked before any work is done (and
//! again just before an old dataset is replaced), and the leftovers of interrupted runs.
//!
//! PyTorch counterpart: none (the official code reads image folders in place and writes no
//! dataset).
//!
//! - `--out` is never the source folder, a folder that contains it, or one inside it.
//! - An existing `--out` is replaced only with `--force`, and only when it is recognizably a
//!   prepared dataset: a readable `manifest.json` of this format, and nothing in the folder but
//!   the manifest and the shards it lists. Anything else (a photo folder, a folder with one
//!   unrelated file in it) is refused, naming what is in the way.
//! - An interrupted run leaves a hidden `.NAME.partial-PID` (or `.NAME.replaced-PID`) folder
//!   beside `--out`. The next run for the same `--out` removes those whose process is gone and
//!   that hold nothing but shards and a manifest, and says so.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::DataError;
use crate::format::MANIFEST;

/// `path` made absolute with its existing part resolved (links, `..`); the part that does not
/// exist yet is appended as given.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut rest = Vec::new();
    let mut head = abs.as_path();
    loop {
        if let Ok(real) = fs::canonicalize(head) {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output that is, contains, or lies inside the source.
pub fn check_apart(source: &Path, out: &Path) -> Result<(), DataError> {
    let (src, dst) = (resolved(source), resolved(out));
    let why = if src == dst {
        "is the source folder"
    } else if src.starts_with(&dst) {
        "contains the source folder"
    } else if dst.starts_with(&src) {
        "is inside the source folder"
    } else {
        return Ok(());
    };
    Err(DataError::Option(format!(
        "--out {} {why} {}: write the dataset somewhere else",
        out.display(),
        source.display()
    )))
}

/// Whether `out` may be replaced by a new dataset: `Ok` when it does not exist, or exists,
/// `force` is given and it is a prepared dataset with nothing else in it.
pub(crate) fn check_replaceable(out: &Path, force: bool) -> Result<(), DataError> {
    if fs::symlink_metadata(out).is_err() {
        return Ok(());
    }
    if !force {
        return Err(DataError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    let refuse = |reason: String| DataError::NotADataset {
        path: out.to_path_buf(),
        reason,
    };
    if !out.is_dir() {
        return Err(refuse("it is not a folder".into()));
    }
    let manifest = crate::dataset::read_manifest(out)
        .map_err(|e| refuse(format!("no readable {MANIFEST} ({e})")))?;
    let mut own: Vec<&str> = vec![MANIFEST];
    for shard in manifest.train.shards.iter().chain(&manifest.val.shards) {
        own.push(&shard.file);
    }
    let entries = fs::read_dir(out).map_err(|e| DataError::io(out, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !own.contains(&name.as_str()) {
            return Err(refuse(format!(
                "it holds `{name}`, which is not part of the dataset"
            )));
        }
    }
    Ok(())
}

/// Hidden folder names of this process's work on `out`: `(partial, replaced)`.
pub(crate) fn work_names(out: &Path) -> Result<(PathBuf, PathBuf), DataError> {
    let name = out_name(out)?;
    let parent = parent_of(out);
    let pid = std::process::id();
    Ok((
        parent.join(format!(".{name}.partial-{pid}")),
        parent.join(format!(".{name}.replaced-{pid}")),
    ))
}

/// Removes what interrupted runs for `out` left beside it (see the module docs); returns what
/// was removed.
pub(crate) fn clean_leftovers(out: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut removed = Vec::new();
    let name = out_name(out)?;
    // without /proc a dead process cannot be told from a live one: leave everything
    if !Path::new("/proc/self").exists() {
        return Ok(removed);
    }
    let parent = parent_of(out);
    let Ok(entries) = fs::read_dir(&parent) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = [".partial-", ".replaced-"].iter().find_map(|tag| {
            file.strip_prefix(&format!(".{name}{tag}"))
                .and_then(|p| p.parse::<u32>().ok())
        });
        let Some(pid) = pid else { continue };
        let path = entry.path();
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if pid == std::process::id() || alive || !holds_only_shards(&path) {
            continue;
        }
        fs::remove_dir_all(&path).map_err(|e| DataError::io(&path, e))?;
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

/// True for a real folder (not a link) holding only shard files and a manifest.
fn holds_only_shards(dir: &Path) -> bool {
    let is_dir = fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    is_dir
        && entries.into_iter().all(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                e.file_type().is_ok_and(|t| t.is_file())
                    && (name == MANIFEST || name.ends_with(".shard"))
            })
        })
}

fn out_name(out: &Path) -> Result<String, DataError> {
    match out.components().next_back() {
        Some(Component::Normal(n)) => Ok(n.to_string_lossy().into_owned()),
        _ => Err(DataError::Option(format!(
            "--out {} is not a folder name",
            out.display()
        ))),
    }
}

fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_overlapping_the_source_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("photos");
        fs::create_dir_all(src.join("cats")).expect("folder");
        for (out, why) in [
            (src.clone(), "is the source folder"),
            (src.join("."), "is the source folder"),
            (dir.path().to_path_buf(), "contains the source folder"),
            (src.join("cats/../new"), "is inside the source folder"),
        ] {
            let err = check_apart(&src, &out).expect_err("overlaps");
            assert!(err.to_string().contains(why), "{}: {err}", out.display());
        }
        assert!(check_apart(&src, &dir.path().join("prepared")).is_ok());
    }

    #[test]
    fn force_replaces_a_dataset_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        assert!(check_replaceable(&out, false).is_ok());
        fs::create_dir(&out).expect("folder");
        fs::write(out.join("notes.txt"), "mine").expect("file");
        assert!(matches!(
            check_replaceable(&out, false),
            Err(DataError::OutputExists { .. })
        ));
        let err = check_replaceable(&out, true).expect_err("not a dataset");
        assert!(err.to_string().contains("manifest.json"), "{err}");
        let file = dir.path().join("file");
        fs::write(&file, "x").expect("file");
        let err = check_replaceable(&file, true).expect_err("a file");
        assert!(err.to_string().contains("not a folder"), "{err}");
    }

    #[test]
    fn leftovers_of_dead_runs_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("ds");
        // a pid that cannot be running (above the kernel's pid_max)
        let dead = dir.path().join(".ds.partial-4294967290");
        fs::create_dir(&dead).expect("folder");
        fs::write(dead.join("train-00000.shard"), "x").expect("file");
        let live = dir
            .path()
            .join(format!(".ds.partial-{}", std::process::id()));
        fs::create_dir(&live).expect("folder");
        let foreign = dir.path().join(".ds.partial-4294967291");
        fs::create_dir(&foreign).expect("folder");
        fs::write(foreign.join("thesis.tex"), "mine").expect("file");
        let other = dir.path().join(".dsx.partial-4294967290");
        fs::create_dir(&other).expect("folder");
        let removed = clean_leftovers(&out).expect("cleaned");
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && foreign.exists() && other.exists());
    }
}
