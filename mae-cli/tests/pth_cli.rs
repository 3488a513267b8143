//! `mae import` and `mae check` on PyTorch `.pth` files (mae-core's fixtures, made by
//! `tools/reference/pth_fixtures.py`): the kind of file, its wrapper and prefix and the preset are
//! recognised and said; the imported weights equal the source; a hostile pickle is one line
//! naming the file and the global, and leaves nothing behind.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod common;
use common::*;

fn pth(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mae-core/tests/fixtures/pth")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn import_reads_pth_files_and_says_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let said = run_ok(&["import", "--from", s(&pth("ddp_f16.pth")), "--out", s(&out)]);
    for part in [
        "PyTorch zip file",
        "under `state_dict`",
        "`module.` prefix removed",
        "full model",
        "preset parity, from the shapes",
    ] {
        assert!(said.contains(part), "`{part}` not in: {said}");
    }
    // the same weights as the source checkpoint, through `mae check` on the .pth directly
    let out2 = dir.path().join("w2.safetensors");
    let said = run_ok(&["import", "--from", s(&pth("full.pth")), "--out", s(&out2)]);
    assert!(
        said.contains("under `model`") && !said.contains("prefix"),
        "{said}"
    );
    let src = mae_core::TensorFile::open(pth("full.pth")).unwrap();
    let imported = mae_core::TensorFile::open(&out2).unwrap();
    for name in src.names().unwrap() {
        assert_eq!(
            src.read(&name).unwrap(),
            imported.read(&name).unwrap(),
            "{name}"
        );
    }
    run_ok(&["check", s(&pth("full.pth")), "--preset", "parity"]);
}

#[test]
fn a_hostile_pth_is_refused_in_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let r = mae(&[
        "import",
        "--from",
        s(&pth("os_system.pth")),
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("os_system.pth") && err.contains("posix.system"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let r = mae(&[
        "import",
        "--from",
        s(&pth("expanded.pth")),
        "--out",
        s(&out),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(!out.exists());
}

#[test]
fn export_round_trips_and_never_writes_over_its_input_or_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let src = pth("full.pth");
    let out = dir.path().join("out.pth");
    let said = run_ok(&["export", "--checkpoint", s(&src), "--out", s(&out)]);
    assert!(
        said.contains("50 tensors") && said.contains("preset parity"),
        "{said}"
    );
    // back through import: the same weights
    let back = dir.path().join("back.safetensors");
    run_ok(&["import", "--from", s(&out), "--out", s(&back)]);
    let (a, b) = (
        mae_core::TensorFile::open(&src).unwrap(),
        mae_core::TensorFile::open(&back).unwrap(),
    );
    for name in a.names().unwrap() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    // an existing .pth cannot say who wrote it: --force
    let before = std::fs::read(&out).unwrap();
    let r = mae(&[
        "export",
        "--checkpoint",
        s(&src),
        "--out",
        s(&out),
        "--encoder-only",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // its own input, even with --force
    let copy = dir.path().join("copy.pth");
    std::fs::copy(&src, &copy).unwrap();
    let r = mae(&[
        "export",
        "--checkpoint",
        s(&copy),
        "--out",
        s(&copy),
        "--force",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("also an input"));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&src).unwrap());
    // safetensors output is recognised as its own next time
    let st = dir.path().join("w.safetensors");
    run_ok(&[
        "export",
        "--checkpoint",
        s(&src),
        "--format",
        "safetensors",
        "--out",
        s(&st),
    ]);
    run_ok(&[
        "export",
        "--checkpoint",
        s(&src),
        "--format",
        "safetensors",
        "--out",
        s(&st),
        "--encoder-only",
    ]);
    let names = mae_core::TensorFile::open(&st).unwrap().names().unwrap();
    assert!(
        names.iter().all(|n| !mae_core::weights::is_decoder_name(n)),
        "{names:?}"
    );
}
