//! The loader: every index exactly once per epoch across ranks, augmentation independent of thread
//! count and batch size, resuming mid-epoch without replay.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mae_data::augment::{Augment, Transform};
use mae_data::loader::{Loader, LoaderConfig};
use mae_data::{prepare, Dataset, PrepareOptions, SourceKind, SplitName};

/// The bundled Fashion-MNIST prepared (in 4,000-image shards) into a scratch directory that is
/// removed when this is dropped, at the end of the test.
struct Prepared {
    dataset: Arc<Dataset>,
    _dir: tempfile::TempDir,
}

fn prepared() -> Prepared {
    let dir = tempfile::Builder::new()
        .prefix("mae-data-loader-")
        .tempdir()
        .unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    let mut opts = PrepareOptions::new(SourceKind::Idx, src, dir.path().join("ds"));
    opts.shard_samples = Some(4000);
    prepare(&opts).unwrap();
    let dataset = Arc::new(Dataset::open(dir.path().join("ds")).unwrap());
    Prepared { dataset, _dir: dir }
}

fn augment() -> Augment {
    Augment::new(Transform::pretrain(), 24, &[0.286], &[0.353], 11).unwrap()
}

fn loader(data: &Prepared, config: LoaderConfig) -> Loader {
    Loader::new(
        Arc::clone(&data.dataset),
        SplitName::Train,
        augment(),
        config,
    )
    .unwrap()
}

#[test]
fn every_index_once_per_epoch_across_ranks() {
    let data = prepared();
    let world = 3;
    let mut seen = vec![0usize; 9000];
    for rank in 0..world {
        let l = loader(
            &data,
            LoaderConfig {
                batch_size: 64,
                rank,
                world_size: world,
                drop_last: false,
                workers: 2,
                ..LoaderConfig::default()
            },
        );
        let mut steps = 0;
        for batch in l.epoch(2, 0) {
            let batch = batch.unwrap();
            assert_eq!(batch.images.len(), batch.len() * 24 * 24);
            assert_eq!(batch.step, steps);
            for &i in &batch.indices {
                seen[i] += 1;
            }
            steps += 1;
        }
        assert_eq!(steps, l.steps_per_epoch());
    }
    assert!(seen.iter().all(|&n| n == 1));

    // with drop_last every rank runs the same number of full batches
    let counts: Vec<usize> = (0..world)
        .map(|rank| {
            let l = loader(
                &data,
                LoaderConfig {
                    batch_size: 64,
                    rank,
                    world_size: world,
                    ..LoaderConfig::default()
                },
            );
            l.epoch(0, 0)
                .map(|b| assert_eq!(b.unwrap().len(), 64))
                .count()
        })
        .collect();
    assert_eq!(counts, vec![9000 / 3 / 64; 3]);
    // another epoch is another order
    let l = loader(&data, LoaderConfig::default());
    assert_ne!(l.epoch_indices(0), l.epoch_indices(1));
}

/// What makes `world` ranks at batch `b` train like one process at batch `world·b` (DDP's
/// `DistributedSampler`): at every step the ranks' batches together hold exactly the images of
/// the one process's batch, and there are as many steps.
#[test]
fn the_ranks_batches_together_are_the_single_process_batch() {
    let data = prepared();
    let (world, b) = (2, 32);
    let single = loader(
        &data,
        LoaderConfig {
            batch_size: world * b,
            ..LoaderConfig::default()
        },
    );
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); single.steps_per_epoch()];
    for rank in 0..world {
        let l = loader(
            &data,
            LoaderConfig {
                batch_size: b,
                rank,
                world_size: world,
                ..LoaderConfig::default()
            },
        );
        assert_eq!(l.steps_per_epoch(), single.steps_per_epoch());
        for batch in l.epoch(3, 0) {
            let batch = batch.unwrap();
            merged[batch.step].extend(&batch.indices);
        }
    }
    for batch in single.epoch(3, 0) {
        let batch = batch.unwrap();
        let mut want = batch.indices.clone();
        want.sort_unstable();
        let got = &mut merged[batch.step];
        got.sort_unstable();
        assert_eq!(*got, want, "step {}", batch.step);
    }
}

#[test]
fn augmentation_does_not_depend_on_threads_or_batch_size() {
    let data = prepared();
    let collect = |batch_size: usize, workers: usize| {
        let l = loader(
            &data,
            LoaderConfig {
                batch_size,
                workers,
                drop_last: false,
                ..LoaderConfig::default()
            },
        );
        let mut by_index = HashMap::new();
        for (n, batch) in l.epoch(5, 0).enumerate() {
            let batch = batch.unwrap();
            for (k, &i) in batch.indices.iter().enumerate() {
                by_index.insert(i, batch.images[k * 576..(k + 1) * 576].to_vec());
            }
            if n > 20 {
                break;
            }
        }
        by_index
    };
    let a = collect(7, 1);
    let b = collect(32, 3);
    let common: Vec<&usize> = a.keys().filter(|k| b.contains_key(k)).collect();
    assert!(common.len() > 100);
    for i in common {
        assert_eq!(a[i], b[i], "sample {i}");
    }
}

#[test]
fn resuming_mid_epoch_gives_the_remaining_batches() {
    let data = prepared();
    let config = LoaderConfig {
        batch_size: 50,
        workers: 2,
        ..LoaderConfig::default()
    };
    let full: Vec<_> = loader(&data, config)
        .epoch(1, 0)
        .take(12)
        .map(|b| b.unwrap())
        .collect();
    let resumed: Vec<_> = loader(&data, config)
        .epoch(1, 9)
        .take(3)
        .map(|b| b.unwrap())
        .collect();
    for (a, b) in full[9..].iter().zip(&resumed) {
        assert_eq!(
            (a.step, &a.indices, &a.images),
            (b.step, &b.indices, &b.images)
        );
    }
    // dropped batches' buffers are reused (across epochs too) without changing the results
    let l = loader(&data, config);
    for _ in 0..2 {
        for (n, b) in l.epoch(1, 0).take(5).enumerate() {
            let b = b.unwrap();
            assert_eq!((&b.indices, &b.images), (&full[n].indices, &full[n].images));
        }
    }
}

#[test]
fn bad_configurations_are_errors() {
    let data = prepared();
    let ds = Arc::clone(&data.dataset);
    let bad = |config: LoaderConfig| {
        Loader::new(Arc::clone(&ds), SplitName::Train, augment(), config).is_err()
    };
    assert!(bad(LoaderConfig {
        batch_size: 0,
        ..LoaderConfig::default()
    }));
    assert!(bad(LoaderConfig {
        rank: 2,
        world_size: 2,
        ..LoaderConfig::default()
    }));
    let rgb = Augment::new(Transform::pretrain(), 24, &[0.5; 3], &[0.5; 3], 0).unwrap();
    assert!(Loader::new(ds, SplitName::Train, rgb, LoaderConfig::default()).is_err());
}
