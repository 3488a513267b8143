//! Fine-tuning and probing end to end: a fine-tuned classifier separates two easy classes, keeps
//! its best model, resumes bitwise; a linear probe on a few hundred bundled Fashion-MNIST images
//! beats chance by a wide margin.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use mae_core::dfdx::prelude::*;
use mae_core::presets::{Parity, Tiny};
use mae_core::{Classifier, Mae, Preset, TensorFile};
use mae_train::feature_set::FeatureKind;
use mae_train::features::FeatureSource;
use mae_train::finetune::finetune;
use mae_train::linprobe::linprobe;
use mae_train::probe::ProbeConfig;
use mae_train::progress::{Hooks, Recorder};
use mae_train::FinetuneConfig;
use mae_train::Resume;

fn config(data: &std::path::Path, out: &std::path::Path, ckpt: &std::path::Path) -> FinetuneConfig {
    let mut cfg = FinetuneConfig::new(data.into(), out.into(), Preset::Parity);
    cfg.checkpoint = Some(ckpt.into());
    cfg.epochs = 3;
    cfg.batch_size = 8;
    cfg.lr = 2e-3;
    cfg.warmup_epochs = 0.5;
    cfg.workers = 2;
    cfg.log_every = 1000;
    cfg
}

#[test]
fn finetuning_learns_keeps_the_best_model_and_resumes_bitwise() {
    let scratch = common::temp_dir("finetune");
    let dir = scratch.path();
    let data = dir.join("data");
    common::two_colour_dataset(&data, 48, 16);
    let ckpt = dir.join("mae.safetensors");
    common::random_parity_mae(&ckpt, 5);
    let stop = Hooks::default;

    // uninterrupted: 3 epochs of 6 steps, mixup/cutmix/erasing/drop path on; its progress is
    // reported to the observer given (the library prints nothing)
    let full = config(&data, &dir.join("full"), &ckpt);
    let recorder = Arc::new(Recorder::default());
    let hooks = Hooks::new(Hooks::default().stop, recorder.clone());
    let summary = finetune(&full, &Resume::No, hooks, &mae_train::dist::Comm::single()).unwrap();
    assert_eq!((summary.outcome.as_str(), summary.step), ("Finished", 18));
    let events = recorder.events();
    assert!(
        events[0].starts_with("Started { what: \"fine-tuning\", total: 18, done: 0"),
        "{events:?}"
    );
    let count = |prefix: &str| events.iter().filter(|e| e.starts_with(prefix)).count();
    // a metrics line at the last step (log_every 1000), 18 positions, 3 evaluations, a checkpoint
    // at each epoch's end
    assert_eq!(count("Metrics(MetricsLine { step: 18"), 1, "{events:?}");
    assert_eq!(count("Progress"), 18);
    assert_eq!(count("Eval { epoch: "), 3);
    assert_eq!(count("Checkpoint"), 3);
    assert_eq!(events.last().map(String::as_str), Some("Finished"));
    let best = summary.best_top1.unwrap();
    assert!(best >= 90.0, "two colours are easy: {summary:?}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("full/results.json")).unwrap())
            .unwrap();
    assert_eq!(results["best_top1"].as_f64(), Some(best));
    assert_eq!(
        std::fs::read_to_string(dir.join("full/eval.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // the best model loads as a classifier and scores what was recorded
    let best_file = TensorFile::open(dir.join("full/best.safetensors")).unwrap();
    let meta = best_file.metadata().unwrap();
    assert_eq!(meta["kind"], "classifier");
    let mut model = Classifier::<Parity, Cpu>::new(&Cpu::default(), 2).unwrap();
    model.load_from(&best_file, "").unwrap();
    let ds = mae_data::Dataset::open(&data).unwrap();
    let acc = mae_train::classify::evaluate(&model, ds.val(), ds.manifest(), 5).unwrap();
    assert_eq!(acc.top1, best);

    // stopped after 8 steps (mid-epoch), then resumed: the same weights bit for bit
    let out = dir.join("resumed");
    let mut first = config(&data, &out, &ckpt);
    first.max_steps = Some(8);
    assert_eq!(
        finetune(
            &first,
            &Resume::No,
            stop(),
            &mae_train::dist::Comm::single()
        )
        .unwrap()
        .outcome,
        "MaxSteps"
    );
    let second = config(&data, &out, &ckpt);
    let resumed = finetune(
        &second,
        &Resume::Auto,
        stop(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    assert_eq!(resumed.step, 18);
    let a = TensorFile::open(dir.join("full/checkpoint-18.safetensors")).unwrap();
    let b = TensorFile::open(out.join("checkpoint-18.safetensors")).unwrap();
    for name in a.names().unwrap() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    assert_eq!(resumed.best_top1, summary.best_top1);

    // bad input: a checkpoint of another encoder, an odd batch with mixup
    let other = dir.join("tiny.safetensors");
    Mae::<Tiny, f32, Cpu>::new(&Cpu::default())
        .unwrap()
        .save_safetensors(&other, &BTreeMap::new())
        .unwrap();
    let err = finetune(
        &config(&data, &dir.join("x"), &other),
        &Resume::No,
        stop(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tiny.safetensors"), "{err}");
    let mut odd = config(&data, &dir.join("y"), &ckpt);
    odd.batch_size = 7;
    assert!(
        finetune(&odd, &Resume::No, stop(), &mae_train::dist::Comm::single())
            .unwrap_err()
            .to_string()
            .contains("even")
    );
}

#[test]
fn a_probe_on_bundled_fashion_mnist_beats_chance_by_a_wide_margin() {
    let scratch = common::temp_dir("probe-bundled");
    let dir = scratch.path();
    let data = common::bundled_subset(dir, 400, 200);
    let checkpoint = dir.join("random.safetensors");
    Mae::<Tiny, f32, Cpu>::new(&Cpu::seed_from_u64(0))
        .unwrap()
        .save_safetensors(&checkpoint, &BTreeMap::new())
        .unwrap();
    let source = FeatureSource::Model(common::cpu_eval_input(checkpoint, data, 100));
    let cfg = ProbeConfig {
        epochs: 20,
        batch_size: 64,
        blr: 10.0,
        warmup_epochs: 2.0,
        ..Default::default()
    };
    let result = linprobe(
        &source,
        FeatureKind::Cls,
        &cfg,
        &mae_train::linprobe::ProbeRunPlace::default(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    // 10 classes: chance is 10%
    assert!(result.top1 > 40.0, "{result:?}");
}

#[test]
fn pretraining_with_eval_every_logs_knn_per_epoch() {
    let scratch = common::temp_dir("eval-every");
    let dir = scratch.path();
    let data = dir.join("data");
    common::two_colour_dataset(&data, 32, 8);
    let out = dir.join("run");
    let given = mae_train::PretrainOverrides {
        data: Some(data.clone()),
        preset: Some(Preset::Parity),
        out: Some(out.clone()),
        epochs: Some(2),
        batch_size: Some(8),
        warmup_epochs: Some(1.0),
        workers: Some(1),
        eval_every: Some(1),
        ..Default::default()
    };
    let cfg = mae_train::PretrainConfig::resolve(given.clone()).unwrap();
    mae_train::pretrain(
        &cfg,
        &Resume::No,
        Hooks::default(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    let lines: Vec<mae_train::pretrain::KnnLine> = std::fs::read_to_string(out.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| (l.epoch, l.step)).collect::<Vec<_>>(),
        [(1, 4), (2, 8)]
    );
    // colour alone separates the classes
    assert!(lines.iter().all(|l| l.knn_top1 == 100.0), "{lines:?}");
    // unlabeled or val-less data is refused up front
    let zero = mae_train::PretrainOverrides {
        eval_every: Some(0),
        ..given
    };
    assert!(mae_train::PretrainConfig::resolve(zero).is_err());
}
