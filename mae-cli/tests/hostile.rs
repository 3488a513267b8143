//! `mae` used carelessly and with hostile input, one test per class of failure: each case ends
//! with one clear line naming the file or flag (exit 1 or 2, never a panic) or with the right
//! handling, and nothing of the user's is lost (files compared before and after).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts a failed run with one line on stderr that contains every one of `names`, no panic.
#[track_caller]
fn refused(r: &Output, names: &[&str]) -> String {
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    let code = r.status.code();
    assert!(matches!(code, Some(1) | Some(2)), "exit {code:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in names {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `--force` replaces a prepared dataset and nothing else; never the source.
#[test]
fn prepare_force_never_deletes_the_source_or_a_foreign_folder() {
    let scratch = Scratch::new();
    let src = scratch.sub("photos");
    std::fs::create_dir_all(src.join("cats")).unwrap();
    image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]))
        .save(src.join("cats/a.png"))
        .unwrap();
    let theirs = scratch.sub("theirs");
    std::fs::write(theirs.join("thesis.tex"), "years of work").unwrap();
    let before = (tree(&src), tree(&theirs));
    let prepare = |out: &Path| {
        mae(&[
            "data",
            "prepare",
            "--from",
            "imagefolder",
            s(&src),
            "--out",
            s(out),
            "--force",
        ])
    };
    refused(&prepare(&src), &["--out", "is the source folder"]);
    refused(&prepare(&src.join("cats")), &["--out", "inside the source"]);
    refused(&prepare(&theirs), &["theirs", "--force replaces only"]);
    assert_eq!((tree(&src), tree(&theirs)), before);
    // the bundled data prepared twice with --force: the second replaces the first
    let out = scratch.sub("fmnist-again").join("ds");
    for _ in 0..2 {
        let r = prepare_bundled(&out, &["--force"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}

/// A fresh run in a folder that holds a run is refused (naming `--resume auto`), changing nothing;
/// with `--resume auto` it continues, and its metrics have each step once.
#[test]
fn a_fresh_run_in_a_used_folder_is_refused_and_resume_continues_it() {
    let scratch = Scratch::new();
    let run = scratch.sub("used");
    let r = s(&run);
    let first = run_ok(&train_args(scratch.data(), r, "3"));
    assert!(first.contains("checkpoint"), "{first}");
    let before = tree(&run);
    refused(
        &mae(&train_args(scratch.data(), r, "5")),
        &["--resume auto", r],
    );
    assert_eq!(tree(&run), before);
    // a fine-tuning resumed into the pretraining folder would prune its checkpoints
    let ft = mae(&resumed(finetune_args(scratch.data(), r, "1")));
    refused(&ft, &["config.json", "fine-tuning"]);
    assert_eq!(tree(&run), before);
    // so would the augmented probe's run; its --out as the checkpoint it reads, or the data
    let ckpt = run.join("checkpoint-3.safetensors");
    let probe = |out: &Path, resume: bool| {
        let mut args = vec![
            "linprobe",
            "--aug",
            "--epochs",
            "1",
            "--checkpoint",
            s(&ckpt),
            "--data",
            scratch.data(),
            "--out",
            s(out),
        ];
        if resume {
            args.extend(["--resume", "auto"]);
        }
        mae(&args)
    };
    refused(&probe(&run, true), &["config.json", "linear-probe"]);
    refused(&probe(&run, false), &["--resume auto", r]);
    refused(&probe(&ckpt, false), &["--out", "not a folder"]);
    let inside = Path::new(scratch.data()).join("probe");
    refused(
        &probe(&inside, false),
        &["--out", "inside the dataset folder"],
    );
    assert!(!inside.exists());
    assert_eq!(tree(&run), before);
    // --out inside the dataset folder
    let inside = Path::new(scratch.data()).join("run");
    refused(
        &mae(&train_args(scratch.data(), s(&inside), "1")),
        &["--out", "inside the dataset folder"],
    );
    assert!(!inside.exists());

    let stdout = run_ok(&resumed(train_args(scratch.data(), r, "5")));
    // the checkpoint it reports exists
    let reported = stdout
        .split("checkpoint ")
        .last()
        .and_then(|t| t.split_whitespace().next())
        .unwrap();
    assert!(Path::new(reported).is_file(), "{reported} in {stdout}");
    let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
}

/// A run that refuses to start (another seed, every checkpoint corrupt, a checkpoint to resume
/// that is missing) leaves the folder as it was: `config.json` included.
#[test]
fn a_run_that_refuses_to_start_changes_nothing() {
    let scratch = Scratch::new();
    let run = scratch.sub("refuse");
    let r = s(&run);
    run_ok(&train_args(scratch.data(), r, "2"));
    let before = tree(&run);
    let args = with_flag(resumed(train_args(scratch.data(), r, "4")), "--seed", "7");
    refused(&mae(&args), &["seed"]);
    assert_eq!(tree(&run), before);
    // the asked-for checkpoint is the one named, not its state file
    let missing = run.join("checkpoint-99.safetensors");
    let mut args = train_args(scratch.data(), r, "4");
    args.extend(["--resume", s(&missing)]);
    let err = refused(&mae(&args), &["checkpoint-99.safetensors"]);
    assert!(!err.contains(".state"), "{err}");
    // the OS's message once, not twice
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(tree(&run), before);
    // every checkpoint corrupt
    for (_, path) in mae_train::checkpoint::list_checkpoints(&run).unwrap() {
        flip_byte(&path, 3);
    }
    let before = tree(&run);
    let args = resumed(train_args(scratch.data(), r, "4"));
    refused(&mae(&args), &["no checkpoint could be loaded", "checksum"]);
    assert_eq!(tree(&run), before);
}

/// No command writes over its own input (even with --force), over a file that is not an earlier
/// output of its own kind (without --force), or over something that is not a file.
#[test]
fn outputs_never_overwrite_inputs_or_other_files() {
    let scratch = Scratch::new();
    let dir = scratch.sub("outs");
    let ckpt = dir.join("init.safetensors");
    let c = s(&ckpt);
    run_ok(&["init", "--preset", "tiny", "--out", c]);
    run_ok(&["init", "--preset", "tiny", "--out", c, "--seed", "1"]); // its own: replaced
    let before = tree(&dir);
    for force in [false, true] {
        let mut args = vec![
            "embed",
            "--checkpoint",
            c,
            "--data",
            scratch.data(),
            "--out",
            c,
        ];
        if force {
            args.push("--force");
        }
        refused(&mae(&args), &["--out", "also an input"]);
        let mut args = vec!["import", "--from", c, "--preset", "tiny", "--out", c];
        if force {
            args.push("--force");
        }
        refused(&mae(&args), &["--out", "also an input"]);
    }
    // a trained checkpoint under `mae init --out`
    let run = scratch.sub("trained");
    run_ok(&train_args(scratch.data(), s(&run), "2"));
    let trained = run.join("checkpoint-2.safetensors");
    let weights_before = std::fs::read(&trained).unwrap();
    let r = mae(&["init", "--preset", "tiny", "--out", s(&trained)]);
    refused(&r, &["checkpoint-2.safetensors", "--force"]);
    assert_eq!(std::fs::read(&trained).unwrap(), weights_before);
    // someone's picture under --out of reconstruct / plot / data show
    let photo = dir.join("photo.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]))
        .save(&photo)
        .unwrap();
    let photo_before = std::fs::read(&photo).unwrap();
    let p = s(&photo);
    let r = mae(&[
        "reconstruct",
        "--checkpoint",
        c,
        "--data",
        scratch.data(),
        "--out",
        p,
    ]);
    refused(&r, &["photo.png", "--force"]);
    refused(
        &mae(&["plot", s(&run), "--out", p]),
        &["photo.png", "--force"],
    );
    refused(
        &mae(&["data", "show", scratch.data(), "--out", p]),
        &["photo.png"],
    );
    assert_eq!(std::fs::read(&photo).unwrap(), photo_before);
    // a plot over its own metrics, a picture over a shard of the data it shows
    let metrics = run.join("metrics.jsonl");
    refused(
        &mae(&["plot", s(&run), "--out", s(&metrics), "--force"]),
        &["also an input"],
    );
    let shard = Path::new(scratch.data()).join("val-00000.shard");
    let r = mae(&[
        "data",
        "show",
        scratch.data(),
        "--out",
        s(&shard),
        "--force",
    ]);
    refused(&r, &["also an input"]);
    // a FIFO (as /dev/null would be) is not replaced by a file
    let fifo = dir.join("pipe.png");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    refused(
        &mae(&["plot", s(&run), "--out", s(&fifo), "--force"]),
        &["not a regular file"],
    );
    assert!(!std::fs::metadata(&fifo).unwrap().is_file());
    assert_eq!(tree(&dir).len(), before.len() + 1);
    // its own earlier pictures it replaces; with --force a stranger's too
    let grid = dir.join("grid.png");
    for _ in 0..2 {
        run_ok(&[
            "data",
            "show",
            scratch.data(),
            "--out",
            s(&grid),
            "--count",
            "4",
        ]);
    }
    run_ok(&["plot", s(&run), "--out", p, "--force"]);
    assert_ne!(std::fs::read(&photo).unwrap(), photo_before);
    // an SVG: someone else's is kept, ours (two runs on one plot) is replaced
    let svg = dir.join("curves.svg");
    std::fs::write(&svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n").unwrap();
    refused(
        &mae(&["plot", s(&run), s(&run), "--out", s(&svg)]),
        &["--force"],
    );
    run_ok(&["plot", s(&run), s(&run), "--out", s(&svg), "--force"]);
    run_ok(&["plot", s(&run), s(&run), "--out", s(&svg), "--log-loss"]);
    refused(
        &mae(&["plot", s(&run), "--out", s(&svg), "--smoothing", "1.5"]),
        &["--smoothing"],
    );
}

/// Logging never kills a run: stdout closed (a pipe whose reader is gone) or full.
#[test]
fn a_closed_or_full_stdout_never_panics() {
    for args in [
        &["presets"][..],
        &["presets", "--json"],
        &["--help"],
        &["completions", "bash"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let r = Command::new(env!("CARGO_BIN_EXE_mae"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        refused(&r, &["writing to stdout"]);
    }

    let scratch = Scratch::new();
    let run = scratch.sub("closed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(train_args(scratch.data(), s(&run), "4"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: the reader goes away at once
    drop(child.stdout.take());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // the run went to its end and saved: only the final summary could not be said
    assert!(
        run.join("checkpoint-4.safetensors").is_file(),
        "{status}: {err}"
    );
    assert!(
        status.success() || err.contains("writing to stdout"),
        "{err}"
    );
}

/// A mask ratio must leave one visible and one masked patch: in pretraining (flag and TOML),
/// reconstruction and the step benchmark it is checked before anything runs.
#[test]
fn mask_ratios_that_leave_no_visible_or_no_masked_patch_are_refused() {
    let scratch = Scratch::new();
    let dir = scratch.sub("mask");
    let run_dir = dir.join("run");
    let o = s(&run_dir);
    for ratio in ["0.99", "0"] {
        let mut args = train_args(scratch.data(), o, "1");
        args.extend(["--mask-ratio", ratio]);
        refused(&mae(&args), &["mask ratio", "49 patches"]);
        let r = mae(&[
            "bench",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--mask-ratio",
            ratio,
        ]);
        refused(&r, &["mask ratio"]);
    }
    let toml = dir.join("run.toml");
    std::fs::write(&toml, "mask_ratio = 0.995\n").unwrap();
    let mut args = train_args(scratch.data(), o, "1");
    args.extend(["--config", s(&toml)]);
    refused(&mae(&args), &["mask ratio"]);
    let ckpt = dir.join("init.safetensors");
    run_ok(&["init", "--preset", "tiny", "--out", s(&ckpt)]);
    let png = dir.join("rec.png");
    let r = mae(&[
        "reconstruct",
        "--checkpoint",
        s(&ckpt),
        "--data",
        scratch.data(),
        "--out",
        s(&png),
        "--mask-ratio",
        "0.99",
    ]);
    refused(&r, &["mask ratio"]);
    assert!(!png.exists() && !dir.join("run").exists());
}

/// Numbers from the user: absurd sizes and NaN are refused with the flag's name (or handled:
/// more columns than images are just the images), computed without overflow.
#[test]
fn absurd_numbers_and_nan_are_refused_naming_the_flag() {
    let scratch = Scratch::new();
    let dir = scratch.sub("numbers");
    let d = scratch.data();
    let grid = dir.join("grid.png");
    let g = s(&grid);
    run_ok(&[
        "data",
        "show",
        d,
        "--out",
        g,
        "--cols",
        "4294967297",
        "--count",
        "3",
    ]);
    refused(
        &mae(&[
            "data", "show", d, "--out", g, "--count", "100000", "--cols", "1",
        ]),
        &["--count"],
    );
    let ckpt = dir.join("init.safetensors");
    let c = s(&ckpt);
    run_ok(&["init", "--preset", "tiny", "--out", c]);
    let run_dir = dir.join("run");
    let o = s(&run_dir);
    let feats = ["--checkpoint", c, "--data", d];
    let rec_path = dir.join("rec.png");
    let rec = s(&rec_path);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&["knn", "--temperature", "NaN"][..], &feats].concat(),
            "--temperature",
        ),
        ([&["knn", "--k", "0"][..], &feats].concat(), "--k"),
        (
            [&["knn", "--eval-batch-size", "0"][..], &feats].concat(),
            "--eval-batch-size",
        ),
        (
            [&["linprobe", "--blr", "NaN"][..], &feats].concat(),
            "--blr",
        ),
        (
            [&["linprobe", "--batch-size", "0"][..], &feats].concat(),
            "--batch-size",
        ),
        (
            [&["linprobe", "--accum-iter", "0"][..], &feats].concat(),
            "--accum-iter",
        ),
        (
            with_flag(finetune_args(d, o, "1"), "--mixup", "NaN"),
            "--mixup",
        ),
        (
            with_flag(finetune_args(d, o, "1"), "--keep-last", "0"),
            "--keep-last",
        ),
        (
            vec!["bench", "--batch-size", "1000000000000"],
            "--batch-size",
        ),
        (
            vec![
                "reconstruct",
                "--checkpoint",
                c,
                "--data",
                d,
                "--out",
                rec,
                "--count",
                "1000000000",
            ],
            "--count",
        ),
        (
            with_flag(train_args(d, o, "1"), "--epochs", "9223372036854775807"),
            "--epochs",
        ),
        (
            with_flag(train_args(d, o, "1"), "--batch-size", "4611686018427387904"),
            "--batch-size",
        ),
        (
            with_flag(train_args(d, o, "1"), "--warmup-epochs", "inf"),
            "--warmup-epochs",
        ),
    ];
    for (args, flag) in cases {
        let r = mae(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "mae {}", args.join(" "));
        assert!(
            err.contains(flag) && !err.contains("panicked"),
            "mae {}: {err}",
            args.join(" ")
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let r = prepare_bundled(&dir.join("ds"), &["--shard-samples", "0"]);
    refused(&r, &["--shard-samples"]);
    assert!(!dir.join("run").exists() && !dir.join("ds").exists());
}

/// Hostile files: Hugging Face q/k/v that are scalars, a manifest and shard that agree on 2^62
/// samples, `/dev/zero` as a weights or config file, a checkpoint with a flipped byte or a
/// forged step.
#[test]
fn hostile_files_get_a_clear_error_naming_them() {
    let scratch = Scratch::new();
    let dir = scratch.sub("files");
    // Hugging Face names with scalar q/k/v
    let hf = dir.join("hf.safetensors");
    let t = |name: &str, shape: Vec<usize>| mae_core::NamedTensor {
        data: vec![0.5; shape.iter().product()],
        name: name.into(),
        shape,
        trainable: true,
    };
    let tensors: Vec<_> = ["query", "key", "value"]
        .iter()
        .flat_map(|w| {
            ["weight", "bias"].map(|k| {
                t(
                    &format!("vit.encoder.layer.0.attention.attention.{w}.{k}"),
                    vec![],
                )
            })
        })
        .chain([t("vit.embeddings.cls_token", vec![1, 1, 192])])
        .collect();
    mae_core::weights::write_safetensors(&hf, &tensors, &BTreeMap::new()).unwrap();
    let out = dir.join("imported.safetensors");
    let r = mae(&[
        "import",
        "--from",
        s(&hf),
        "--preset",
        "tiny",
        "--out",
        s(&out),
    ]);
    refused(&r, &["hf.safetensors", "query/key/value"]);
    assert!(!out.exists());
    // devices as inputs
    refused(
        &mae(&["info", "/dev/zero"]),
        &["/dev/zero", "not a regular file"],
    );
    let run = dir.join("run");
    let mut args = train_args(scratch.data(), s(&run), "1");
    args.extend(["--config", "/dev/zero"]);
    refused(&mae(&args), &["/dev/zero"]);
    // 2^62 samples in a shard and its manifest
    let ds = dir.join("ds");
    let r = prepare_bundled(&ds, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let shard = ds.join("val-00000.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(&shard, bytes).unwrap();
    let manifest = ds.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["val"]["count"] = (1u64 << 62).into();
    m["val"]["shards"][0]["samples"] = (1u64 << 62).into();
    m["count"] = ((1u64 << 62) + 9000).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    refused(&mae(&["data", "verify", s(&ds)]), &["val-00000.shard"]);
    refused(
        &mae(&train_args(s(&ds), s(&run), "1")),
        &["val-00000.shard"],
    );

    // checkpoints 2, 4, 6: a flipped weight byte in 6, a forged step in 4's state
    let with_keep = |steps: &'static str| {
        with_flag(
            train_args(scratch.data(), s(&run), steps),
            "--keep-last",
            "3",
        )
    };
    run_ok(&with_keep("6"));
    let six = run.join("checkpoint-6.safetensors");
    let mut b = std::fs::read(&six).unwrap();
    let n = b.len();
    b[n - 100] ^= 0x01;
    std::fs::write(&six, b).unwrap();
    refused(
        &mae(&["info", s(&six)]),
        &["checkpoint-6.safetensors", "checksum"],
    );
    // the state of 4 says step 2^63, its checksum made anew: the file name disagrees
    let forge = |model: &Path, into: &Path| {
        let f = mae_core::TensorFile::open(mae_train::checkpoint::state_path(model)).unwrap();
        let mut meta: BTreeMap<String, String> = f.metadata().unwrap().into_iter().collect();
        let mut ts: serde_json::Value = serde_json::from_str(&meta["train_state"]).unwrap();
        ts["step"] = (1u64 << 63).into();
        meta.insert("train_state".into(), ts.to_string());
        let tensors: Vec<_> = f
            .names()
            .unwrap()
            .into_iter()
            .map(|name| {
                let h = f.read(&name).unwrap().unwrap();
                mae_core::NamedTensor {
                    name,
                    shape: h.shape,
                    data: h.data,
                    trainable: false,
                }
            })
            .collect();
        let state = mae_train::checkpoint::state_path(into);
        mae_core::weights::write_safetensors(&state, &tensors, &meta).unwrap();
    };
    let four = run.join("checkpoint-4.safetensors");
    forge(&four, &four);
    let r = mae(&resumed(with_keep("7")));
    let err = String::from_utf8_lossy(&r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    // both are skipped, each named with its reason; checkpoint-2 is resumed
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("checkpoint-4.state") && err.contains("file name says 4"),
        "{err}"
    );
    assert!(
        err.contains("checkpoint-6.safetensors") && err.contains("checksum"),
        "{err}"
    );
    assert!(
        stdout.contains("resumed from") && stdout.contains("checkpoint-2"),
        "{stdout}"
    );
    assert!(run.join("checkpoint-7.safetensors").is_file());
    // a forged checkpoint whose name and state agree on 2^63 is past the schedule: refused
    // before it could win pruning over the real ones
    let far = run.join("checkpoint-9223372036854775808.safetensors");
    std::fs::copy(run.join("checkpoint-7.safetensors"), &far).unwrap();
    forge(&run.join("checkpoint-7.safetensors"), &far);
    let before = tree(&run);
    refused(
        &mae(&resumed(with_keep("8"))),
        &["9223372036854775808", "schedule"],
    );
    assert_eq!(tree(&run), before);
}

/// What an interrupted save leaves in a run folder (a temporary file, a state file without its
/// model file) is removed by the next run, which says so; nothing else is touched.
#[test]
fn leftovers_of_an_interrupted_save_are_cleaned_and_reported() {
    let scratch = Scratch::new();
    let run = scratch.sub("leftovers");
    let r = s(&run);
    run_ok(&train_args(scratch.data(), r, "2"));
    std::fs::write(run.join(".checkpoint-3.safetensors.Ab12Cd.tmp"), "partial").unwrap();
    let orphan = run.join("checkpoint-3.state.safetensors");
    std::fs::copy(run.join("checkpoint-2.state.safetensors"), &orphan).unwrap();
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    let stdout = run_ok(&resumed(train_args(scratch.data(), r, "3")));
    assert_eq!(
        stdout.matches("left by an interrupted save").count(),
        2,
        "{stdout}"
    );
    assert!(!run.join(".checkpoint-3.safetensors.Ab12Cd.tmp").exists());
    assert_eq!(std::fs::read(run.join("notes.txt")).unwrap(), b"mine");
    // the new checkpoint-3 has its state again
    assert!(orphan.is_file() && run.join("checkpoint-3.safetensors").is_file());
}

/// Folder walks: a FIFO named like an image is reported, never opened (opening it would wait
/// forever); a link to a folder is followed; a truncated JPEG is skipped as truncated.
#[test]
fn odd_entries_in_an_image_folder_are_reported_not_fatal() {
    let scratch = Scratch::new();
    let src = scratch.sub("walk");
    std::fs::create_dir_all(src.join("cats")).unwrap();
    std::fs::create_dir_all(scratch.sub("elsewhere").join("dogs")).unwrap();
    let img = image::RgbImage::from_fn(60, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 6, 9]));
    img.save(src.join("cats/a.png")).unwrap();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    std::fs::write(src.join("cats/cut.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    let elsewhere = scratch.sub("elsewhere");
    std::fs::write(elsewhere.join("dogs/b.jpg"), &jpeg).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("dogs"), src.join("dogs")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(src.join("cats/pipe.jpg"))
        .status()
        .unwrap()
        .success());
    let out = scratch.sub("walk-out").join("ds");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args([
            "data",
            "prepare",
            "--from",
            "imagefolder",
            s(&src),
            "--out",
            s(&out),
        ])
        .args(["--size", "16", "--val-fraction", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("prepare hangs (opened the FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let info = run_ok(&["data", "info", s(&out), "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["count"], 2, "{info}");
    let skipped = info["skipped"].to_string();
    assert!(
        skipped.contains("pipe.jpg") && skipped.contains("FIFO"),
        "{skipped}"
    );
    assert!(
        skipped.contains("cut.jpg") && skipped.contains("truncated"),
        "{skipped}"
    );
}

/// Two runs into one folder at once: the second is refused while the first holds it.
#[test]
fn a_second_run_into_a_busy_folder_is_refused() {
    let scratch = Scratch::new();
    let run = scratch.sub("busy");
    let r = s(&run);
    let mut first = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(train_args(scratch.data(), r, "100000"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&run.join("metrics.jsonl"));
    // bounded: were the lock missing, it would end after a few steps instead of hanging here
    let second = mae(&resumed(train_args(scratch.data(), r, "2")));
    first.kill().unwrap();
    first.wait().unwrap();
    refused(&second, &["another mae run"]);
}

/// Pruning never removes the checkpoint just written, nor one a resumed run has not reached: a
/// run resumed past a newer, corrupt checkpoint with `--keep-last 1` used to prune by step and
/// delete its own new checkpoint while reporting it.
#[test]
fn a_run_never_deletes_the_checkpoint_it_reports() {
    let scratch = Scratch::new();
    let run = scratch.sub("prune");
    let r = s(&run);
    run_ok(&with_flag(
        train_args(scratch.data(), r, "6"),
        "--keep-last",
        "3",
    ));
    let six = run.join("checkpoint-6.safetensors");
    flip_byte(&six, 1);
    let b = std::fs::read(&six).unwrap();
    let args = resumed(with_flag(
        train_args(scratch.data(), r, "5"),
        "--keep-last",
        "1",
    ));
    let stdout = run_ok(&args);
    let reported = stdout
        .split("checkpoint ")
        .last()
        .and_then(|t| t.split_whitespace().next())
        .unwrap();
    assert!(reported.ends_with("checkpoint-5.safetensors"), "{stdout}");
    assert!(Path::new(reported).is_file(), "{stdout}");
    // the corrupt newer one is left as it was; the older ones are pruned
    assert_eq!(std::fs::read(&six).unwrap(), b);
    assert!(!run.join("checkpoint-4.safetensors").exists());
}
