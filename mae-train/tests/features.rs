//! Features and kNN end to end on a small synthetic dataset: two classes that differ in colour are
//! separated by kNN on a random-init encoder's features.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mae_core::dfdx::prelude::*;
use mae_core::presets::Parity;
use mae_core::Mae;
use mae_data::writer::DatasetWriter;
use mae_data::SplitName;
use mae_train::features::{extract_dataset, knn_eval, write_features, EvalInput, FeatureKind};

#[test]
fn knn_separates_two_easy_classes_and_features_are_written() {
    let dir = std::env::temp_dir().join(format!("mae-train-features-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let mut w = DatasetWriter::create(&data, 32, 3, false).unwrap();
    for i in 0..40usize {
        let label = (i % 2) as i32;
        let px: Vec<u8> = (0..32 * 32 * 3)
            .map(|j| {
                if label == 0 {
                    (j % 3 * 100 + i) as u8
                } else {
                    (250 - j % 7 * 20 - i) as u8
                }
            })
            .collect();
        let split = if i < 30 {
            SplitName::Train
        } else {
            SplitName::Val
        };
        w.push(split, &px, label).unwrap();
    }
    w.finish(vec!["a".into(), "b".into()], "synthetic".into(), Vec::new())
        .unwrap();

    let checkpoint = dir.join("model.safetensors");
    Mae::<Parity, f32, Cpu>::new(&Cpu::seed_from_u64(0))
        .unwrap()
        .save_safetensors(&checkpoint, &BTreeMap::new())
        .unwrap();
    let input = EvalInput {
        checkpoint,
        data,
        batch: 7,
    };
    let (train, val, classes) = extract_dataset(&input).unwrap();
    assert_eq!(
        (train.len(), val.len(), classes, train.dim),
        (30, 10, 2, 48)
    );
    assert_eq!(train.cls.len(), 30 * 48);
    assert_ne!(train.cls, train.avg);
    let acc = knn_eval(&input, 5, 0.07, FeatureKind::Cls).unwrap();
    assert_eq!(acc.top1, 100.0, "{acc:?}");

    let cfg = mae_train::linprobe::ProbeConfig {
        epochs: 30,
        batch_size: 8,
        blr: 40.0,
        warmup_epochs: 3.0,
        ..Default::default()
    };
    let probe = mae_train::linprobe::linprobe(&input, FeatureKind::Avg, &cfg).unwrap();
    assert_eq!(
        (probe.top1, probe.train, probe.val),
        (100.0, 30, 10),
        "{probe:?}"
    );

    let out = dir.join("features.safetensors");
    write_features(&out, &[("train", &train), ("val", &val)]).unwrap();
    let file = mae_core::TensorFile::open(&out).unwrap();
    assert_eq!(file.shape("val.avg").unwrap(), Some(vec![10, 48]));
    assert_eq!(
        file.read("train.labels").unwrap().unwrap().data[..4],
        [0.0, 1.0, 0.0, 1.0]
    );
}
