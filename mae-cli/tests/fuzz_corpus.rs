//! Every committed fuzz input (`fuzz/corpus/TARGET/*` and `fuzz/regressions/TARGET/*`) through
//! the very code its fuzz target runs (`fuzz/bodies/TARGET.rs`, included here), on the stable
//! toolchain: a finding, once fixed and its input kept, stays fixed. A panic fails the test; an
//! error is the expected answer to a broken file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod weights {
    include!("../../fuzz/bodies/weights.rs");
}
mod checkpoint {
    include!("../../fuzz/bodies/checkpoint.rs");
}
mod dataset {
    include!("../../fuzz/bodies/dataset.rs");
}
mod idx {
    include!("../../fuzz/bodies/idx.rs");
}
mod config {
    include!("../../fuzz/bodies/config.rs");
}
mod image_files {
    include!("../../fuzz/bodies/image.rs");
}
mod pth {
    include!("../../fuzz/bodies/pth.rs");
}
mod tar_listing {
    include!("../../fuzz/bodies/tar.rs");
}

/// The committed inputs of `target`; there must be some (the seeds at least).
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no committed inputs for {target}");
    files
}

fn run_all(target: &str, run: fn(&[u8])) {
    for path in inputs(target) {
        let bytes = std::fs::read(&path).unwrap();
        let done = std::panic::catch_unwind(|| run(&bytes));
        assert!(done.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn weights_inputs() {
    run_all("weights", weights::run);
}

#[test]
fn checkpoint_inputs() {
    run_all("checkpoint", checkpoint::run);
}

#[test]
fn dataset_inputs() {
    run_all("dataset", dataset::run);
}

#[test]
fn idx_and_cifar_inputs() {
    run_all("idx", idx::run);
}

#[test]
fn config_inputs() {
    run_all("config", config::run);
}

#[test]
fn image_inputs() {
    run_all("image", image_files::run);
}

#[test]
fn tar_inputs() {
    run_all("tar", tar_listing::run);
}

#[test]
fn pth_inputs() {
    run_all("pth", pth::run);
}
