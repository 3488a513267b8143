//! What a command may write over, checked before it computes anything: the one place of the
//! rule "no command overwrites an existing file that is not its own without `--force`, and none
//! writes over its own input".
//!
//! A file is a command's own when it is a previous output of the same kind: a safetensors file
//! whose `written_by` metadata names the command, a PNG whose `Software` chunk does, a JSON
//! result with its `written_by`. Anything else that exists (a trained checkpoint under `mae init
//! --out`, someone's photo under `mae plot --out`, an `.npy` file, which cannot say who wrote it)
//! needs `--force`. An output that is one of the command's inputs (the same path, the same file
//! through a link, a file of an input dataset) is refused even with `--force`; so is anything
//! that is not a regular file (`/dev/null` would be replaced by a file).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// How to recognize a previous output of the command.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A safetensors file with this `written_by`.
    Weights(&'static str),
    /// A PNG whose `Software` chunk is `mae-rs` and this.
    Png(&'static str),
    /// A JSON object with this `written_by`.
    Json(&'static str),
    /// An SVG with the plot's mark (`mae_train::plot::SVG_MARK`).
    Svg(&'static str),
    /// A file that cannot say who wrote it (`.npy`): never taken as the command's own.
    Unmarked,
}

impl Kind {
    fn writer(self) -> &'static str {
        match self {
            Kind::Weights(w) | Kind::Json(w) => w,
            Kind::Png(w) | Kind::Svg(w) => w,
            Kind::Unmarked => "this command",
        }
    }

    fn recognizes(self, path: &Path) -> bool {
        match self {
            Kind::Weights(w) => mae_core::weights::written_by(path).as_deref() == Some(w),
            Kind::Png(w) => {
                mae_data::png::written_by(path).is_some_and(|by| format!("mae {by}") == w)
            }
            Kind::Json(w) => std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v.get("written_by").and_then(|x| x.as_str()) == Some(w)),
            Kind::Svg(_) => std::fs::read_to_string(path)
                .is_ok_and(|t| t.lines().take(3).any(|l| l == mae_train::plot::SVG_MARK)),
            Kind::Unmarked => false,
        }
    }
}

/// The files of the inputs: each path given, and for a dataset folder its manifest and shards.
pub fn input_files(files: &[&Path], datasets: &[&Path]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    for dir in datasets {
        out.push(dir.join(mae_data::format::MANIFEST));
        if let Ok(m) = mae_data::dataset::read_manifest(dir) {
            for shard in m.train.shards.iter().chain(&m.val.shards) {
                out.push(dir.join(&shard.file));
            }
        }
    }
    out
}

/// True when `a` and `b` name the same file (the same path once resolved, or the same inode).
fn same_file(a: &Path, b: &Path) -> bool {
    if mae_data::outdir::resolved(a) == mae_data::outdir::resolved(b) {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// Checks that `flag` (e.g. `--out`) may write `path` as output of `kind`, given `inputs`.
pub fn check(flag: &str, path: &Path, kind: Kind, inputs: &[PathBuf], force: bool) -> Result<()> {
    if let Some(input) = inputs.iter().find(|i| same_file(path, i)) {
        bail!(
            "{flag} {} is also an input ({}): the command would write over what it reads; give another {flag}",
            path.display(),
            input.display()
        );
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if !meta.is_file() {
        bail!(
            "{flag} {} exists and is not a regular file; give a file path",
            path.display()
        );
    }
    if force || kind.recognizes(path) {
        return Ok(());
    }
    bail!(
        "{flag} {} exists and is not an earlier output of `{}`; give --force to replace it, or another {flag}",
        path.display(),
        kind.writer()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_never_an_output_and_a_stranger_needs_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        let input = dir.path().join("weights.safetensors");
        std::fs::write(&input, "x").expect("file");
        let inputs = vec![input.clone()];
        let dotted = dir.path().join(".").join("weights.safetensors");
        for force in [false, true] {
            let err = check("--out", &dotted, Kind::Unmarked, &inputs, force)
                .expect_err("an input")
                .to_string();
            assert!(err.contains("also an input"), "{err}");
        }
        let theirs = dir.path().join("photo.png");
        std::fs::write(&theirs, "x").expect("file");
        let err = check("--out", &theirs, Kind::Png("mae plot"), &inputs, false)
            .expect_err("not ours")
            .to_string();
        assert!(err.contains("--force") && err.contains("mae plot"), "{err}");
        assert!(check("--out", &theirs, Kind::Png("mae plot"), &inputs, true).is_ok());
        let fresh = dir.path().join("new.png");
        assert!(check("--out", &fresh, Kind::Png("mae plot"), &inputs, false).is_ok());
        let err = check("--out", dir.path(), Kind::Unmarked, &inputs, true)
            .expect_err("a folder")
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
