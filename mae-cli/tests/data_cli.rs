//! The `mae data` commands as a person runs them: prepare the bundled data, info as JSON, verify,
//! and a non-zero exit naming the shard when a byte is flipped.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn mae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn prepare_info_verify_show() {
    let scratch = tempfile::tempdir().unwrap(); // removed when the test ends
    let dir = scratch.path();
    let out = dir.join("fmnist");
    let out_s = out.to_str().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    let r = mae(&[
        "data",
        "prepare",
        "--from",
        "idx",
        src.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("10000 images (9000 train, 1000 val)"));

    // a second run without --force refuses, naming the directory
    let r = mae(&[
        "data",
        "prepare",
        "--from",
        "idx",
        src.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));

    let r = mae(&["data", "info", out_s, "--json"]);
    assert!(r.status.success());
    let info: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(info["count"], 10000);
    assert_eq!(info["image_size"], 28);
    assert_eq!(info["channels"], 1);
    assert_eq!(info["classes"].as_array().unwrap().len(), 10);
    assert_eq!(info["skipped"].as_array().unwrap().len(), 0);
    assert_eq!(info["shards"].as_array().unwrap().len(), 2);

    let grid = dir.join("grid.png");
    let r = mae(&[
        "data",
        "show",
        out_s,
        "--out",
        grid.to_str().unwrap(),
        "--count",
        "8",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(image_size(&grid) > 1000);

    assert!(mae(&["data", "verify", out_s]).status.success());
    let shard = out.join("val-00000.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[500] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let r = mae(&["data", "verify", out_s]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("val-00000.shard") && err.contains("checksum"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
}

fn image_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_tar_source_that_is_no_tar_or_a_kind_misspelt_is_one_line_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let junk = scratch.path().join("junk.tar");
    std::fs::write(&junk, [9u8; 2048]).unwrap();
    let out = scratch.path().join("ds");
    let (junk_s, out_s) = (junk.to_str().unwrap(), out.to_str().unwrap());
    let r = mae(&["data", "prepare", "--from", "tar", junk_s, "--out", out_s]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("junk.tar") && err.contains("not a readable tar"),
        "{err}"
    );
    assert!(!out.exists());
    let r = mae(&[
        "data", "prepare", "--from", "tarball", junk_s, "--out", out_s,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("tarball") && err.contains("tar,"), "{err}");
}
