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

/// `n` RGB PNGs of 32×32 per class in `root/{train,val}/class{k}`, colours by class and index.
fn write_image_folder(root: &Path, classes: usize, n: usize) {
    for split in ["train", "val"] {
        for k in 0..classes {
            let dir = root.join(split).join(format!("class{k}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = (x * 7 + y * 3 + (k * 50 + i * 13) as u32) % 256;
                    image::Rgb([v as u8, (k * 60) as u8, (255 - v) as u8])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn released_classifiers_evaluate_and_classify_with_their_own_head() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    write_image_folder(&folder, 5, 2);
    let data = dir.path().join("data");
    run_ok(&[
        "data",
        "prepare",
        "--from",
        "imagefolder",
        s(&folder),
        "--out",
        s(&data),
        "--size",
        "32",
    ]);
    for (file, head) in [
        ("finetuned.pth", "global-pool head (`fc_norm`)"),
        ("timm_vit.pth", "cls-token head (`norm`)"),
    ] {
        let said = run_ok(&[
            "finetune",
            "--eval",
            "--checkpoint",
            s(&pth(file)),
            "--data",
            s(&data),
            "--json",
        ]);
        let acc: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
        let top1 = acc["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1), "{said}");
        assert_eq!(acc["top5"].as_f64(), Some(100.0), "5 classes: {said}");

        // info and check see a classifier, not a broken MAE
        let info = run_ok(&["info", s(&pth(file))]);
        assert!(
            info.contains(&format!("classifier: 5 classes, {head}")) && info.contains("parity"),
            "{info}"
        );
        run_ok(&["check", s(&pth(file)), "--preset", "parity"]);

        // imported, it stays a classifier with that head, and evaluates the same
        let imported = dir.path().join(format!("{file}.safetensors"));
        let said = run_ok(&["import", "--from", s(&pth(file)), "--out", s(&imported)]);
        assert!(
            said.contains(&format!("classifier, 5 classes, {head}")),
            "{said}"
        );
        let again = run_ok(&[
            "finetune",
            "--eval",
            "--checkpoint",
            s(&imported),
            "--data",
            s(&data),
            "--json",
        ]);
        let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
        assert_eq!(again["top1"].as_f64(), Some(top1), "{file}");

        // exported as .pth and read back: the same tensors, bit for bit
        let exported = dir.path().join(format!("{file}.export.pth"));
        let said = run_ok(&[
            "export",
            "--checkpoint",
            s(&imported),
            "--format",
            "pth",
            "--out",
            s(&exported),
        ]);
        assert!(
            said.contains(&format!("classifier, 5 classes, {head}")),
            "{said}"
        );
        let a = mae_core::TensorFile::open(pth(file)).unwrap();
        let b = mae_core::TensorFile::open(&exported).unwrap();
        assert_eq!(a.names().unwrap(), b.names().unwrap());
        for name in a.names().unwrap() {
            assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
        }
        // no Hugging Face or encoder-only export of a classifier: one line, nothing written
        let hf = dir.path().join("hf");
        let r = mae(&[
            "export",
            "--checkpoint",
            s(&imported),
            "--format",
            "hf",
            "--out",
            s(&hf),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains("classifier"), "{err}");
        assert!(!hf.join("model.safetensors").exists());
    }

    // classify: in the order given, names from --classes, probabilities best first
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "zero\none\ntwo\nthree\nfour\n").unwrap();
    let a = folder.join("val/class1/0.png");
    let b = folder.join("val/class3/1.png");
    let said = run_ok(&[
        "classify",
        "--checkpoint",
        s(&pth("finetuned.pth")),
        "--image",
        s(&a),
        s(&b),
        "--classes",
        s(&names),
        "--top",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["image"], s(&a));
    assert_eq!(images[1]["image"], s(&b));
    let all = ["zero", "one", "two", "three", "four"];
    for img in images {
        let top = img["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let p: Vec<f64> = top
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]) && p.iter().sum::<f64>() <= 1.0 + 1e-9);
        for t in top {
            let k = t["class"].as_u64().unwrap() as usize;
            assert_eq!(t["name"], all[k]);
        }
    }
    // text output: one line per image, then its classes
    let text = run_ok(&[
        "classify",
        "--checkpoint",
        s(&pth("timm_vit.pth")),
        "--image",
        s(&a),
    ]);
    assert_eq!(text.lines().count(), 1 + 5, "{text}");
    assert!(text.contains("class "), "default names: {text}");

    // careless input: each one line naming the culprit
    let wrong_count = dir.path().join("three.txt");
    std::fs::write(&wrong_count, "a\nb\nc\n").unwrap();
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let mae_ckpt = dir.path().join("mae.safetensors");
    run_ok(&[
        "import",
        "--from",
        s(&pth("full.pth")),
        "--out",
        s(&mae_ckpt),
    ]);
    let ft = pth("finetuned.pth");
    let missing = dir.path().join("missing.png");
    for (args, culprit) in [
        (
            vec![
                "--checkpoint",
                s(&ft),
                "--image",
                s(&a),
                "--classes",
                s(&wrong_count),
            ],
            "three.txt",
        ),
        (
            vec!["--checkpoint", s(&ft), "--image", s(&junk)],
            "junk.png",
        ),
        (
            vec!["--checkpoint", s(&ft), "--image", s(&missing)],
            "missing.png",
        ),
        (
            vec!["--checkpoint", s(&mae_ckpt), "--image", s(&a)],
            "head.bias",
        ),
        (
            vec!["--checkpoint", s(&ft), "--image", s(&a), "--top", "0"],
            "--top",
        ),
    ] {
        let mut full = vec!["classify"];
        full.extend(args);
        let r = mae(&full);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{full:?} succeeded");
        assert!(err.contains(culprit), "{full:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
