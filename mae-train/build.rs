//! Records the git commit the crate is built from (`MAE_GIT_COMMIT`: the short hash, `unknown`
//! outside a git checkout), for `mae --version`, `config.json` and checkpoint metadata.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MAE_GIT_COMMIT={commit}");
    // rebuilt when HEAD moves: HEAD itself, the branch it names, the packed refs
    if let Some(git) = git_dir() {
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            git.join("packed-refs").display()
        );
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(branch) = head.trim().strip_prefix("ref: ") {
                println!("cargo:rerun-if-changed={}", git.join(branch).display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// The `.git` folder of the checkout above this crate, if any.
fn git_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    manifest
        .ancestors()
        .map(|d: &Path| d.join(".git"))
        .find(|g| g.is_dir())
}
