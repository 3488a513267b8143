//! `mae pretrain` as a person runs it: exact resume (after a clean stop, after SIGKILL), SIGINT,
//! a corrupt newest checkpoint, and clear errors for bad input. Also `reconstruct`, `plot`, `info`.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn resume_is_exact_after_a_stop_and_after_sigkill() {
    let scratch = Scratch::new();
    // straight: 6 steps
    let straight = scratch.sub("straight");
    let s = straight.to_str().unwrap();
    let stdout = run_ok(&train_args(scratch.data(), s, "6"));
    assert!(stdout.contains("reached --max-steps at step 6"), "{stdout}");
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["batch_size"], 16);
    // keep-last 2: only steps 4 and 6 remain
    assert!(!straight.join("checkpoint-2.safetensors").exists());
    assert!(straight.join("checkpoint-4.safetensors").exists());

    // TensorBoard: one train_loss and lr per step, equal to metrics.jsonl's (as f32)
    let losses = tensorboard_scalars(&straight, "train_loss");
    let lines: Vec<(u64, f32)> = metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(losses, lines);
    assert_eq!(tensorboard_scalars(&straight, "lr").len(), 6);

    // 3 steps without TensorBoard, stop, resume to 6 with it
    let split = scratch.sub("split");
    let p = split.to_str().unwrap();
    run_ok(&with_flag(
        train_args(scratch.data(), p, "3"),
        "--tensorboard",
        "false",
    ));
    assert!(tensorboard_scalars(&split, "train_loss").is_empty());
    let mut args = train_args(scratch.data(), p, "6");
    args.extend(["--resume", "auto"]);
    let stdout = run_ok(&args);
    assert!(
        stdout.contains("resumed from") && stdout.contains("checkpoint-3"),
        "{stdout}"
    );
    assert_eq!(tensorboard_scalars(&split, "train_loss"), lines[3..]);
    assert_same_checkpoint(
        &straight.join("checkpoint-6.safetensors"),
        &split.join("checkpoint-6.safetensors"),
    );

    // SIGKILL between saves: kill once checkpoint-2 exists, then resume to 6
    let killed = scratch.sub("killed");
    let k = killed.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(train_args(scratch.data(), k, "6"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&killed.join("checkpoint-2.safetensors"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut args = train_args(scratch.data(), k, "6");
    args.extend(["--resume", "auto"]);
    run_ok(&args);
    assert_same_checkpoint(
        &straight.join("checkpoint-6.safetensors"),
        &killed.join("checkpoint-6.safetensors"),
    );
    // the killed run's points past its checkpoint are dropped: one curve, the straight one's
    assert_eq!(tensorboard_scalars(&killed, "train_loss"), losses);
}

/// `(step, value)` of `tag` in the TensorBoard event files of `run`, as TensorBoard shows them.
fn tensorboard_scalars(run: &std::path::Path, tag: &str) -> Vec<(u64, f32)> {
    mae_train::run::tensorboard::read::scalars(run)
        .unwrap()
        .into_iter()
        .filter(|s| s.tag == tag)
        .map(|s| (s.step, s.value))
        .collect()
}

#[test]
fn a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used() {
    let scratch = Scratch::new();
    let run = scratch.sub("corrupt");
    let r = run.to_str().unwrap();
    run_ok(&train_args(scratch.data(), r, "4"));
    let newest = run.join("checkpoint-4.safetensors");
    let mut bytes = weights(&newest);
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&newest, bytes).unwrap();
    let mut args = train_args(scratch.data(), r, "5");
    args.extend(["--resume", "auto"]);
    let out = mae(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped checkpoint") && stderr.contains("checkpoint-4.safetensors"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from"));
    assert!(run.join("checkpoint-5.safetensors").exists());
}

/// SIGINT and SIGTERM finish the step, write a checkpoint and exit with 75 (`EX_TEMPFAIL`): a
/// scheduler's script tells a preempted run from a finished one (0) or a failed one (1).
#[test]
fn a_signal_finishes_the_step_saves_and_exits_75() {
    let scratch = Scratch::new();
    for signal in ["-INT", "-TERM"] {
        let run = scratch.sub(&format!("signal{signal}"));
        let r = run.to_str().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mae"))
            .args(train_args(scratch.data(), r, "100000"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
            < 1
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "training did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(75),
            "{signal}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("--resume auto"), "{stdout}");
        assert!(!mae_train::checkpoint::list_checkpoints(&run)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let scratch = Scratch::new();
    let out = scratch.sub("errors");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "pretrain",
                "--data",
                "/no/such/dir",
                "--preset",
                "tiny",
                "--out",
                o,
            ],
            "/no/such/dir",
        ),
        (
            vec![
                "pretrain",
                "--data",
                scratch.data(),
                "--preset",
                "vit-x",
                "--out",
                o,
            ],
            "unknown preset",
        ),
        (
            vec![
                "pretrain",
                "--data",
                scratch.data(),
                "--preset",
                "tiny",
                "--out",
                o,
                "--input-size",
                "30",
            ],
            "28×28",
        ),
        (
            vec![
                "pretrain",
                "--data",
                scratch.data(),
                "--preset",
                "tiny",
                "--out",
                o,
                "--mask-ratio",
                "1.2",
            ],
            "mask ratio",
        ),
        (
            vec![
                "pretrain",
                "--data",
                scratch.data(),
                "--preset",
                "small32",
                "--out",
                o,
            ],
            "channel",
        ),
        (
            vec![
                "pretrain",
                "--data",
                scratch.data(),
                "--preset",
                "tiny",
                "--out",
                o,
                "--batch-size",
                "0",
            ],
            "batch-size",
        ),
    ];
    for (args, expect) in cases {
        let r = mae(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `--precision amp-f16`: the first loss is the f32 run's to half precision, the loss scaler is
/// saved in the checkpoint, and a stopped run resumes to the same bits (the scale included).
#[test]
fn mixed_precision_trains_saves_its_loss_scale_and_resumes_exactly() {
    let scratch = Scratch::new();
    let with_amp = |out: &str, steps: &'static str| {
        let mut args: Vec<String> = train_args(scratch.data(), out, steps)
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(["--precision".into(), "amp-f16".into()]);
        args
    };
    let run = |args: &[String]| run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let straight = scratch.sub("amp");
    let stdout = run(&with_amp(straight.to_str().unwrap(), "4"));
    assert!(stdout.contains("amp-f16: loss scale"), "{stdout}");
    let f32_run = scratch.sub("f32");
    run_ok(&train_args(scratch.data(), f32_run.to_str().unwrap(), "4"));
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (half, full) = (losses(&straight), losses(&f32_run));
    assert_eq!(half.len(), 4);
    // the first step's loss is the same model's on the same batch, in half precision; later
    // ones differ more (a step skipped on overflow leaves the run one update behind)
    assert!(
        (half[0] - full[0]).abs() <= 5e-3 * full[0],
        "amp {half:?} vs f32 {full:?}"
    );
    assert!(half.iter().all(|l| l.is_finite()), "{half:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["precision"], "amp-f16");
    let saved = train_state(&straight.join("checkpoint-4.safetensors"));
    let scale = saved["loss_scaler"]["scale"].as_f64().unwrap();
    assert!((1.0..=65536.0).contains(&scale), "{saved}");
    assert_eq!(loss_scaler_steps(&saved), 4, "{saved}");

    let split = scratch.sub("amp-split");
    run(&with_amp(split.to_str().unwrap(), "2"));
    let mut args = with_amp(split.to_str().unwrap(), "4");
    args.extend(["--resume".into(), "auto".into()]);
    run(&args);
    let resumed = train_state(&split.join("checkpoint-4.safetensors"));
    assert_eq!(resumed["loss_scaler"], saved["loss_scaler"]);
    assert_same_checkpoint(
        &straight.join("checkpoint-4.safetensors"),
        &split.join("checkpoint-4.safetensors"),
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step() {
    let scratch = Scratch::new();
    let run = scratch.sub("nan");
    let r = run.to_str().unwrap();
    let mut args = train_args(scratch.data(), r, "40");
    let at = args.iter().position(|a| *a == "--blr").unwrap();
    args[at] = "--lr";
    args[at + 1] = "1e30";
    let out = mae(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("at step") && stderr.contains("last good checkpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn reconstruct_plot_info_import() {
    let scratch = Scratch::new();
    let run = scratch.sub("look");
    let r = run.to_str().unwrap();
    run_ok(&train_args(scratch.data(), r, "2"));
    let ckpt = run.join("checkpoint-2.safetensors");
    let c = ckpt.to_str().unwrap();
    let grid = run.join("grid.png");
    let stdout = run_ok(&[
        "reconstruct",
        "--checkpoint",
        c,
        "--data",
        scratch.data(),
        "--out",
        grid.to_str().unwrap(),
        "--count",
        "3",
    ]);
    assert!(
        stdout.contains("3 images") && stdout.contains("un-normalized"),
        "{stdout}"
    );
    let img = image::open(&grid).unwrap();
    assert!(img.width() > 4 * 112 && img.height() > 3 * 112);
    let plot = run.join("plot.png");
    assert!(run_ok(&["plot", r, "--out", plot.to_str().unwrap()]).contains("2 points"));
    assert!(plot.exists());
    let info = run_ok(&["info", c]);
    assert!(
        info.contains("preset tiny") && info.contains("step 2") && info.contains("total 3096720"),
        "{info}"
    );
    let imported = run.join("imported.safetensors");
    let stdout = run_ok(&[
        "import",
        "--from",
        c,
        "--preset",
        "tiny",
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert!(stdout.contains("official/timm names"), "{stdout}");
    let r = mae(&[
        "import",
        "--from",
        c,
        "--preset",
        "parity",
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
}

#[test]
fn finetune_runs_and_its_classifier_evaluates_to_the_same_numbers() {
    let scratch = Scratch::new();
    let run = scratch.sub("finetune");
    let ft = run.join("ft");
    let ft = ft.to_str().unwrap();
    let finetune = |out: &str, precision: &str, extra: &[&'static str]| {
        let mut args = finetune_args(scratch.data(), out, "3");
        args.extend([
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--precision",
            precision,
            "--json",
        ]);
        args.extend(extra);
        run_ok(&args)
    };
    let out = finetune(ft, "f32", &[]);
    // progress lines first, the JSON summary last
    let summary: serde_json::Value =
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["outcome"], "MaxSteps");
    let top1 = summary["last"]["top1"].as_f64().unwrap();
    let ckpt = format!("{ft}/checkpoint-3.safetensors");
    let eval = run_ok(&[
        "finetune",
        "--eval",
        "--checkpoint",
        &ckpt,
        "--data",
        scratch.data(),
        "--json",
    ]);
    let eval: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
    assert_eq!(eval["top1"].as_f64(), Some(top1));

    // in mixed precision (and with the cls-token head): it trains, and the loss scaler is
    // saved with the state
    let amp = run.join("ft-amp");
    let out = finetune(amp.to_str().unwrap(), "amp-f16", &["--cls-token"]);
    let summary: serde_json::Value =
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["outcome"], "MaxSteps", "{out}");
    let state = train_state(&amp.join("checkpoint-3.safetensors"));
    assert_eq!(loss_scaler_steps(&state), 3, "{state}");
    let names = mae_core::TensorFile::open(amp.join("checkpoint-3.safetensors"))
        .unwrap()
        .names()
        .unwrap();
    assert!(
        names.iter().any(|n| n == "norm.weight") && !names.iter().any(|n| n == "fc_norm.weight"),
        "the cls-token head keeps `norm`: {names:?}"
    );

    // an MAE checkpoint is not a classifier; --from-scratch needs a preset
    let mae_ckpt = run.join("mae.safetensors");
    run_ok(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        mae_ckpt.to_str().unwrap(),
    ]);
    let r = mae(&[
        "finetune",
        "--eval",
        "--checkpoint",
        mae_ckpt.to_str().unwrap(),
        "--data",
        scratch.data(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("mae.safetensors") && err.contains("head.bias"),
        "{err}"
    );
    let r = mae(&[
        "finetune",
        "--from-scratch",
        "--data",
        scratch.data(),
        "--out",
        ft,
    ]);
    assert!(!r.status.success());
}

/// The official scripts' spellings run (`main_finetune.py`'s flags with `mae finetune` in front),
/// with the recipe's RandAugment and gradient clipping; `--nb_classes`, `--input_size` and `--aa`
/// that do not fit are refused in one line naming the flag, and nothing is written.
#[test]
fn the_official_flag_spellings_run_and_misfits_are_refused() {
    let scratch = Scratch::new();
    let out = scratch.sub("official").join("ft");
    let out = out.to_str().unwrap();
    let official = |extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            "tiny",
            "--data_path",
            scratch.data(),
            "--output_dir",
            out,
            "--batch_size",
            "8",
            "--num_workers",
            "1",
            "--max_steps",
            "2",
            "--blr",
            "5e-4",
            "--layer_decay",
            "0.65",
            "--weight_decay",
            "0.05",
            "--drop_path",
            "0.1",
            "--mixup",
            "0.8",
            "--cutmix",
            "1.0",
            "--reprob",
            "0.25",
            "--smoothing",
            "0.1",
            "--aa",
            "rand-m9-mstd0.5-inc1",
            "--clip_grad",
            "1.0",
            "--input_size",
            "28",
            "--nb_classes",
            "10",
            "--json",
        ];
        args.extend_from_slice(extra);
        mae(&args)
    };
    let r = official(&["--from_scratch"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(text.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["outcome"], "MaxSteps");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{out}/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["aa"], "rand-m9-mstd0.5-inc1", "{config}");
    assert_eq!(config["clip_grad"], 1.0, "{config}");
    assert_eq!(config["batch_size"], 8, "{config}");
    // main_finetune.py --eval --resume FILE: the same top-1 as the run's own evaluation
    let ckpt = format!("{out}/checkpoint-2.safetensors");
    let eval = run_ok(&[
        "finetune",
        "--eval",
        "--resume",
        &ckpt,
        "--data_path",
        scratch.data(),
        "--json",
    ]);
    let eval: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
    assert_eq!(eval["top1"], summary["last"]["top1"]);

    let fresh = scratch.sub("refused").join("ft");
    let fresh = fresh.to_str().unwrap();
    for (flag, value, says) in [
        ("--nb_classes", "5", "10 classes"),
        ("--input_size", "32", "28-px"),
        ("--aa", "rand-q9", "--aa rand-q9"),
        ("--clip_grad", "0", "--clip-grad"),
    ] {
        let mut args = vec![
            "finetune",
            "--from-scratch",
            "--model",
            "tiny",
            "--data",
            scratch.data(),
        ];
        args.extend(["--out", fresh, flag, value]);
        let r = mae(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains(says),
            "{flag} {value}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !std::path::Path::new(fresh).exists(),
            "{flag}: wrote {fresh}"
        );
    }
}

/// A `mae` built without the `mpi` feature, started by mpirun as one of several ranks, refuses to
/// run (rather than run N copies of one job into one folder) and says how to get an MPI build.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_started_as_one_of_several_ranks_says_so() {
    let s = Scratch::new();
    let out = s.sub("ranks");
    let r = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(train_args(s.data(), out.to_str().unwrap(), "1"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("2 ranks") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!out.join("checkpoint-1.safetensors").exists());
}

/// `--device cuda` in a build without the `cuda` feature is one clear line, not a panic, on every
/// command that computes.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_asked_of_a_cpu_build_says_how_to_get_one() {
    let scratch = Scratch::new();
    let dir = scratch.sub("cuda");
    let ckpt = init_tiny(&dir);
    let ckpt = ckpt.to_str().unwrap();
    let (data, ft, emb) = (scratch.data(), dir.join("ft"), dir.join("emb.safetensors"));
    let png = dir.join("grid.png");
    let source = ["--checkpoint", ckpt, "--data", data, "--device", "cuda"];
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "bench",
            "--device",
            "cuda",
            "--steps",
            "1",
            "--batch-size",
            "2",
        ],
        [
            &["pretrain", "--device", "cuda"][..],
            &train_args(data, ft.to_str().unwrap(), "1")[1..],
        ]
        .concat(),
        [&["knn"][..], &source[..]].concat(),
        [&["linprobe", "--epochs", "1"][..], &source[..]].concat(),
        [&["embed", "--out", emb.to_str().unwrap()][..], &source[..]].concat(),
        [
            &["reconstruct", "--out", png.to_str().unwrap()][..],
            &source[..],
        ]
        .concat(),
        with_flag(
            finetune_args(data, ft.to_str().unwrap(), "1"),
            "--device",
            "cuda",
        ),
    ];
    for args in runs {
        let r = mae(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "mae {}", args.join(" "));
        assert!(
            err.contains("built without CUDA")
                && err.contains("gpu-build")
                && !err.contains("panicked"),
            "mae {}: {err}",
            args.join(" ")
        );
    }
    // nothing written: no run folder, no config.json, no features, no grid
    assert!(!ft.exists() && !emb.exists() && !png.exists());
}

/// `mae linprobe --aug --out RUN --json`: the result alone on stdout (log lines go to stderr), a
/// checkpoint of the head per epoch in RUN, `--resume auto` continuing the run, and a fresh run
/// into the used folder refused.
#[test]
fn the_augmented_probe_keeps_a_run_folder_and_json_alone_on_stdout() {
    let scratch = Scratch::new();
    let data = shades_dataset(&scratch, &[("dark", 30), ("light", 220)], 16);
    let d = data.to_str().unwrap();
    let ckpt = init_tiny(&scratch.sub("enc"));
    let c = ckpt.to_str().unwrap();
    let run = scratch.sub("probe");
    let probe = |extra: &[&str]| {
        let mut args = vec![
            "linprobe",
            "--checkpoint",
            c,
            "--data",
            d,
            "--aug",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--blr",
            "40",
            "--optimizer",
            "lars",
            "--warmup-epochs",
            "1",
            "--json",
            "--out",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        mae(&args)
    };
    let parse = |r: &std::process::Output| -> serde_json::Value {
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let first = probe(&[]);
    let result = parse(&first);
    // 24 training images in batches of 8: 3 steps an epoch
    assert_eq!(
        (&result["outcome"], &result["step"]),
        (&"Finished".into(), &6.into())
    );
    assert_eq!((&result["train"], &result["val"]), (&24.into(), &8.into()));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("step 6/6"), "{stderr}");
    for f in [
        "checkpoint-6.safetensors",
        "checkpoint-3.safetensors",
        "results.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let again = parse(&probe(&["--resume", "auto"]));
    assert_eq!(
        (&again["step"], &again["top1"]),
        (&result["step"], &result["top1"])
    );
    let refused = probe(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--resume auto"),
        "{err}"
    );
    // LINPROBE.md's --accum_iter: 3 batches of 8 make one optimizer step an epoch
    std::fs::remove_dir_all(&run).unwrap();
    let accum = parse(&probe(&["--accum_iter", "3"]));
    assert_eq!(accum["step"], 2, "{accum}");
    assert_eq!(accum["config"]["accum_iter"], 3, "{accum}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // lr = blr 40 · 8 · 3 / 256 = 3.75 at its peak; epoch 1 starts at the end of the warmup
    assert!(metrics.contains("\"lr\":3.75"), "{metrics}");
}

/// `--json` on the commands that report (each output parses, with the fields a script reads),
/// `mae embed`'s labels and provenance, `mae --version` with the commit, the same build recorded in a run's `config.json`, and shell
/// completions.
#[test]
fn reports_parse_as_json_and_runs_record_the_build() {
    let scratch = Scratch::new();
    let dir = scratch.sub("json");
    let ckpt = init_tiny(&dir);
    let c = ckpt.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_ok(args);
        let last = out.trim().lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("mae {}: {e}: {out}", args.join(" ")))
    };
    let presets = json(&["presets", "--json"]);
    let tiny = presets
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiny")
        .unwrap();
    assert_eq!(tiny["embed_dim"], 192, "{tiny}");
    let info = json(&["info", c, "--json"]);
    assert_eq!(
        (&info["preset"], &info["kind"]),
        (&"tiny".into(), &"full".into())
    );
    assert!(info["encoder_params"].as_u64().unwrap() > 0, "{info}");
    let check = json(&["check", "--preset", "tiny", c, "--json"]);
    assert_eq!(
        check["params"],
        info["encoder_params"].as_u64().unwrap() + info["decoder_params"].as_u64().unwrap()
    );
    let png = dir.join("rec.png");
    let rec = json(&[
        "reconstruct",
        "--checkpoint",
        c,
        "--data",
        scratch.data(),
        "--out",
        png.to_str().unwrap(),
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(rec["count"], 2, "{rec}");
    // embed: int64 labels, the class names and where each row came from recorded beside them
    let shades = shades_dataset(&scratch, &[("dark", 30), ("light", 220)], 4);
    let feats = dir.join("feats.safetensors");
    let emb = json(&[
        "embed",
        "--checkpoint",
        c,
        "--data",
        shades.to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        (&emb["dim"], &emb["classes"], &emb["class_names"]),
        (
            &192.into(),
            &2.into(),
            &serde_json::json!(["dark", "light"])
        ),
        "{emb}"
    );
    assert_eq!(
        emb["samples"]["train"].as_u64().unwrap() + emb["samples"]["val"].as_u64().unwrap(),
        8,
        "{emb}"
    );
    let file = mae_core::TensorFile::open(&feats).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta["class_names"], r#"["dark","light"]"#);
    let labels = file.read_i64("train.labels").unwrap().unwrap().data;
    assert!(labels.iter().all(|l| (0..2).contains(l)), "{labels:?}");
    // image files: their paths in row order, in STEM.meta.json beside the .npy files
    let photos = [("a.png", 10u8), ("b.png", 200)].map(|(name, v)| {
        let p = dir.join(name);
        image::GrayImage::from_pixel(40, 30, image::Luma([v]))
            .save(&p)
            .unwrap();
        p
    });
    let npy = dir.join("photos.npy");
    run_ok(&[
        "embed",
        "--checkpoint",
        c,
        "--image",
        photos[1].to_str().unwrap(),
        photos[0].to_str().unwrap(),
        "--out",
        npy.to_str().unwrap(),
    ]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("photos.meta.json")).unwrap()).unwrap();
    let paths: Vec<String> = meta["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 2, "{meta}");
    assert!(
        paths[0].ends_with("b.png") && paths[1].ends_with("a.png"),
        "{meta}"
    );
    assert_eq!(meta["num_classes"], 0, "{meta}");
    let run = dir.join("run");
    let mut args = train_args(scratch.data(), run.to_str().unwrap(), "2");
    args.push("--json");
    let summary = json(&args);
    assert_eq!(
        (&summary["outcome"], &summary["step"]),
        (&"MaxSteps".into(), &2.into())
    );

    // the build: `mae --version` names the commit that config.json and the summary record
    let version = run_ok(&["--version"]);
    let commit = summary["mae_rs"]["commit"].as_str().unwrap().to_string();
    assert!(
        !commit.is_empty() && version.contains(&format!("(commit {commit})")),
        "{version}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["mae_rs"]["commit"], commit.as_str());
    // and the run still resumes with it there
    let mut more = train_args(scratch.data(), run.to_str().unwrap(), "3");
    more.extend(["--resume", "auto"]);
    run_ok(&more);

    let bash = run_ok(&["completions", "bash"]);
    assert!(bash.contains("_mae()") && bash.contains("pretrain") && bash.contains("--mask-ratio"));
    for shell in ["zsh", "fish"] {
        assert!(
            run_ok(&["completions", shell]).contains("linprobe"),
            "{shell}"
        );
    }
}
