//! Features and kNN end to end on a small synthetic dataset: two classes that differ in colour are
//! separated by kNN on a random-init encoder's features.
#![allow(clippy::unwrap_used)]

mod common;

use mae_train::feature_set::{
    read_features, read_provenance, write_features, FeatureKind, Provenance,
};
use mae_train::features::{extract_dataset, EvalInput, FeatureSource};
use mae_train::knn::knn_eval;
use mae_train::linprobe::linprobe;
use mae_train::probe::{ProbeConfig, ProbeOptimizer};

#[test]
fn knn_separates_two_easy_classes_and_features_are_written() {
    let scratch = common::temp_dir("features");
    let dir = scratch.path();
    let data = dir.join("data");
    common::two_colour_dataset(&data, 30, 10);

    let checkpoint = dir.join("model.safetensors");
    common::random_parity_mae(&checkpoint, 0);
    let input = common::cpu_eval_input(checkpoint, data, 7);
    let (train, val, classes) = extract_dataset(&input, &mae_train::dist::Comm::single()).unwrap();
    assert_eq!(
        (train.len(), val.len(), classes, train.dim),
        (30, 10, 2, 48)
    );
    assert_eq!(train.cls.len(), 30 * 48);
    assert_ne!(train.cls, train.avg);
    let source = FeatureSource::Model(input.clone());
    let acc = knn_eval(
        &source,
        5,
        0.07,
        FeatureKind::Cls,
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    assert_eq!(acc.top1, 100.0, "{acc:?}");

    let cfg = ProbeConfig {
        epochs: 30,
        batch_size: 8,
        blr: 40.0,
        warmup_epochs: 3.0,
        ..Default::default()
    };
    let probe = linprobe(
        &source,
        FeatureKind::Avg,
        &cfg,
        &mae_train::linprobe::ProbeRunPlace::default(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    assert_eq!(
        (probe.top1, probe.train, probe.val),
        (100.0, 30, 10),
        "{probe:?}"
    );
    // the augmented probe (random crops and flips, an encoder pass per epoch) and AdamW
    let augmented = ProbeConfig {
        epochs: 4,
        batch_size: 8,
        blr: 0.5,
        warmup_epochs: 1.0,
        optimizer: ProbeOptimizer::AdamW,
        augment: true,
        ..Default::default()
    };
    let probe = linprobe(
        &source,
        FeatureKind::Cls,
        &augmented,
        &mae_train::linprobe::ProbeRunPlace::default(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    assert_eq!((probe.top1, probe.train), (100.0, 30), "{probe:?}");

    // the encoder in half precision (`--precision amp-f16`): the same features to f16 rounding
    // of its activations, and the same probe results
    let half_input = EvalInput {
        precision: mae_train::amp::Precision::AmpF16,
        ..input.clone()
    };
    let (half_train, _, _) =
        extract_dataset(&half_input, &mae_train::dist::Comm::single()).unwrap();
    let err = common::rel_err(&half_train.cls, &train.cls);
    assert!(err > 0.0 && err < 1e-2, "relative error {err:e}");
    let half_source = FeatureSource::Model(half_input);
    let probe = linprobe(
        &half_source,
        FeatureKind::Cls,
        &augmented,
        &mae_train::linprobe::ProbeRunPlace::default(),
        &mae_train::dist::Comm::single(),
    )
    .unwrap();
    assert_eq!((probe.top1, probe.train), (100.0, 30), "{probe:?}");

    let out = dir.join("features.safetensors");
    let provenance = Provenance {
        num_classes: 2,
        class_names: vec!["zero".into(), "one \"quoted\"".into()],
        dataset: Some("/data/prepared".into()),
        paths: vec![],
        checkpoint: Some("ck.safetensors".into()),
    };
    write_features(&out, &[("train", &train), ("val", &val)], &provenance).unwrap();
    let (train2, val2, classes2) = read_features(&out).unwrap();
    assert_eq!((&train2, &val2, classes2), (&train, &val, 2));
    assert_eq!(read_provenance(&out).unwrap(), provenance);
    // labels are int64, as in the `.npy` files and as PyTorch holds them
    let bytes = std::fs::read(&out).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["val.labels"]["dtype"], "I64", "{header}");
    assert_eq!(header["train.cls"]["dtype"], "F32", "{header}");
    // a file of an older version (labels as f32, no provenance) still reads
    let old = dir.join("old.safetensors");
    let f32_labels: Vec<mae_core::NamedTensor> = [("train", &train), ("val", &val)]
        .iter()
        .flat_map(|(name, f)| {
            let t = |kind: &str, shape: Vec<usize>, data: Vec<f32>| mae_core::NamedTensor {
                name: format!("{name}.{kind}"),
                shape,
                data,
                trainable: false,
            };
            [
                t("cls", vec![f.len(), f.dim], f.cls.clone()),
                t("avg", vec![f.len(), f.dim], f.avg.clone()),
                t(
                    "labels",
                    vec![f.len()],
                    f.labels.iter().map(|&l| l as f32).collect(),
                ),
            ]
        })
        .collect();
    mae_core::weights::write_safetensors(&old, &f32_labels, &Default::default()).unwrap();
    assert_eq!(
        read_features(&old).unwrap(),
        (train.clone(), val.clone(), 2)
    );
    assert_eq!(read_provenance(&old).unwrap(), Provenance::default());
    // probes and kNN run on the written features as on the model
    let from_file = FeatureSource::Features(out.clone());
    assert_eq!(
        knn_eval(
            &from_file,
            5,
            0.07,
            FeatureKind::Cls,
            &mae_train::dist::Comm::single()
        )
        .unwrap(),
        acc
    );
    assert!(
        linprobe(
            &from_file,
            FeatureKind::Avg,
            &augmented,
            &mae_train::linprobe::ProbeRunPlace::default(),
            &mae_train::dist::Comm::single()
        )
        .is_err(),
        "no images to augment"
    );
    // NumPy files: one per array, with a valid header
    let npy = write_features(&dir.join("f.npy"), &[("val", &val)], &provenance).unwrap();
    assert_eq!(npy.len(), 4);
    assert_eq!(npy[3], dir.join("f.meta.json"));
    assert_eq!(read_provenance(&dir.join("f.npy")).unwrap(), provenance);
    let bytes = std::fs::read(dir.join("f.val.cls.npy")).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (10, 48)"),
        "{header}"
    );
    assert_eq!(bytes.len(), 10 + header_len + 10 * 48 * 4);
    assert_eq!(
        f32::from_le_bytes(bytes[10 + header_len..][..4].try_into().unwrap()),
        val.cls[0]
    );
    let file = mae_core::TensorFile::open(&out).unwrap();
    assert_eq!(file.shape("val.avg").unwrap(), Some(vec![10, 48]));
    assert_eq!(
        file.read_i64("train.labels").unwrap().unwrap().data[..4],
        [0, 1, 0, 1]
    );
}

/// The augmented probe with a run folder: checkpoints of the head under the official names, a
/// run interrupted after its first step and resumed ends bit-identical to one run straight
/// through, and the careless cases are refused with a clear line.
#[test]
fn the_augmented_probe_checkpoints_resumes_bit_exactly_and_refuses_misuse() {
    use mae_train::linprobe::ProbeRunPlace;
    use mae_train::Resume;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let scratch = common::temp_dir("probe-run");
    let dir = scratch.path();
    let data = dir.join("data");
    common::two_colour_dataset(&data, 30, 10);
    let checkpoint = dir.join("model.safetensors");
    common::random_parity_mae(&checkpoint, 0);
    let source = FeatureSource::Model(common::cpu_eval_input(checkpoint, data, 16));
    let cfg = ProbeConfig {
        epochs: 3,
        batch_size: 8,
        blr: 40.0,
        warmup_epochs: 1.0,
        augment: true,
        ..Default::default()
    };
    let comm = mae_train::dist::Comm::single();
    let place = |out: &str, resume: Resume, stop: bool| ProbeRunPlace {
        out: Some(dir.join(out)),
        resume,
        hooks: mae_train::progress::Hooks::stop_only(Arc::new(AtomicBool::new(stop))),
        tensorboard: true,
    };
    let run = |place: &ProbeRunPlace, cfg: &ProbeConfig| {
        linprobe(&source, FeatureKind::Cls, cfg, place, &comm)
    };

    // straight through: 30 images in whole batches of 8 are 3 steps an epoch
    let straight = run(&place("a", Resume::No, false), &cfg).unwrap();
    assert_eq!((straight.outcome.as_str(), straight.step), ("Finished", 9));
    let last = straight.checkpoint.clone().unwrap();
    assert_eq!(last, dir.join("a/checkpoint-9.safetensors"));
    let file = mae_core::TensorFile::open(&last).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta["written_by"], "mae linprobe");
    let names = |f: &mae_core::TensorFile| {
        let mut n: Vec<String> = f.names().unwrap();
        n.sort();
        n
    };
    assert_eq!(
        names(&file),
        [
            "head.0.running_mean",
            "head.0.running_var",
            "head.1.bias",
            "head.1.weight"
        ]
    );
    let state = mae_core::TensorFile::open(dir.join("a/checkpoint-9.state.safetensors")).unwrap();
    assert_eq!(
        names(&state),
        [
            "momentum_buffer.head.1.bias",
            "momentum_buffer.head.1.weight"
        ]
    );
    assert!(dir.join("a/results.json").is_file() && dir.join("a/metrics.jsonl").is_file());
    // epoch checkpoints, the last 2 kept
    assert!(!dir.join("a/checkpoint-3.safetensors").exists());
    assert!(dir.join("a/checkpoint-6.safetensors").exists());

    // stopped after its first step, then resumed: the same head, bit for bit
    let stopped = run(&place("b", Resume::No, true), &cfg).unwrap();
    assert_eq!((stopped.outcome.as_str(), stopped.step), ("Interrupted", 1));
    let resumed = run(&place("b", Resume::Auto, false), &cfg).unwrap();
    assert_eq!((resumed.outcome.as_str(), resumed.step), ("Finished", 9));
    let read = |p: &std::path::Path| {
        let f = mae_core::TensorFile::open(p).unwrap();
        names(&f)
            .iter()
            .map(|n| f.read(n).unwrap().unwrap().data)
            .collect::<Vec<_>>()
    };
    assert_eq!(read(&last), read(&dir.join("b/checkpoint-9.safetensors")));
    assert_eq!((resumed.top1, resumed.top5), (straight.top1, straight.top5));

    // misuse: a used folder without --resume, the other optimizer on resume, --out for cached
    // features, --resume without --out
    let err = run(&place("a", Resume::No, false), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds a run") && err.contains("--resume auto"),
        "{err}"
    );
    let adamw = ProbeConfig {
        optimizer: ProbeOptimizer::AdamW,
        epochs: 4,
        ..cfg
    };
    let err = run(&place("a", Resume::Auto, false), &adamw)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--optimizer lars") && err.contains("checkpoint-9"),
        "{err}"
    );
    let cached = ProbeConfig {
        augment: false,
        ..cfg
    };
    let err = run(&place("c", Resume::No, false), &cached)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--out and --resume are for the augmented probe"),
        "{err}"
    );
    assert!(!dir.join("c").exists());
    let no_out = ProbeRunPlace {
        out: None,
        resume: Resume::Auto,
        ..ProbeRunPlace::default()
    };
    let err = run(&no_out, &cfg).unwrap_err().to_string();
    assert!(err.contains("--resume needs --out"), "{err}");
    // a fine-tuning folder is not a probe's
    std::fs::create_dir(dir.join("f")).unwrap();
    std::fs::write(dir.join("f/config.json"), "{\"preset\": \"parity\"}").unwrap();
    let err = run(&place("f", Resume::Auto, false), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the configuration of a linear-probe run"),
        "{err}"
    );
}
