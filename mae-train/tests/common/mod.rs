//! Test data shared by the mae-train integration tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

use mae_data::writer::DatasetWriter;
use mae_data::SplitName;

/// A fresh temporary directory for one test, removed when dropped (pass or fail).
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mae-train-{name}-"))
        .tempdir()
        .unwrap()
}

/// 32×32 RGB images of two classes that differ in colour: `train` + `val` samples, alternating.
pub fn two_colour_dataset(dir: &Path, train: usize, val: usize) {
    let mut w = DatasetWriter::create(dir, 32, 3, false).unwrap();
    for i in 0..train + val {
        let label = (i % 2) as i32;
        let px: Vec<u8> = (0..32 * 32 * 3)
            .map(|j| {
                if label == 0 {
                    (j % 3 * 100 + i % 50) as u8
                } else {
                    (250 - j % 7 * 20 - i % 50) as u8
                }
            })
            .collect();
        let split = if i < train {
            SplitName::Train
        } else {
            SplitName::Val
        };
        w.push(split, &px, label).unwrap();
    }
    w.finish(vec!["a".into(), "b".into()], "synthetic".into(), Vec::new())
        .unwrap();
}

/// The first `train` / `val` images of the bundled Fashion-MNIST test set (prepared into
/// `dir/full` first), copied into `dir/subset`, which is returned.
pub fn bundled_subset(dir: &Path, train: usize, val: usize) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    let full = dir.join("full");
    let mut opts = mae_data::PrepareOptions::new(mae_data::SourceKind::Idx, &root, &full);
    opts.force = true;
    mae_data::prepare(&opts).unwrap();
    let data = mae_data::Dataset::open(&full).unwrap();
    let m = data.manifest().clone();
    let subset = dir.join("subset");
    let mut w = DatasetWriter::create(&subset, m.image_size, m.channels, false).unwrap();
    for (split, from, n) in [
        (SplitName::Train, data.train(), train),
        (SplitName::Val, data.val(), val),
    ] {
        for i in 0..n {
            let s = from.get(i).unwrap();
            w.push(split, s.data, s.label).unwrap();
        }
    }
    w.finish(m.classes.clone(), "bundled subset".into(), Vec::new())
        .unwrap();
    subset
}

/// `‖a − b‖ / ‖b‖` (L2).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        n += (y as f64).powi(2);
    }
    d.sqrt() / n.sqrt().max(1e-30)
}

/// The largest [`rel_err`] over the named tensors of `a` against `b` (same names in the same
/// order) and its tensor's name. The key third of each `attn.qkv.bias` is left out: its gradient
/// is zero in exact arithmetic (softmax does not change when every key's score moves by the same
/// amount; NOTES.md), so on both sides it is rounding noise.
pub fn worst_rel_err(a: &[mae_core::NamedTensor], b: &[mae_core::NamedTensor]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    let mut out = (0.0, String::new());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
        let n = x.data.len();
        let parts: &[(usize, usize)] = if x.name.ends_with("attn.qkv.bias") {
            &[(0, n / 3), (2 * n / 3, n)]
        } else {
            &[(0, n)]
        };
        for &(s, e) in parts {
            let err = rel_err(&x.data[s..e], &y.data[s..e]);
            if err > out.0 {
                out = (err, x.name.clone());
            }
        }
    }
    out
}

/// A freshly initialized `Parity` MAE (dfdx's RNG seeded with `seed`) saved at `path`.
pub fn random_parity_mae(path: &Path, seed: u64) {
    use mae_core::dfdx::prelude::*;
    mae_core::Mae::<mae_core::presets::Parity, f32, Cpu>::new(&Cpu::seed_from_u64(seed))
        .unwrap()
        .save_safetensors(path, &std::collections::BTreeMap::new())
        .unwrap();
}

/// The encoder of `checkpoint` over `data`, on the CPU in f32, `batch` images a pass.
pub fn cpu_eval_input(
    checkpoint: PathBuf,
    data: PathBuf,
    batch: usize,
) -> mae_train::features::EvalInput {
    mae_train::features::EvalInput {
        checkpoint,
        data,
        batch,
        device: mae_train::device::DeviceKind::Cpu,
        precision: mae_train::amp::Precision::F32,
        reporter: Default::default(),
    }
}
