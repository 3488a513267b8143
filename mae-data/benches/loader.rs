//! Loader throughput (crop + flip + normalize into f32 NCHW batches), images/s:
//! 224×224 RGB from 256×256 shards, and 28×28 grayscale (the bundled Fashion-MNIST).
//! `cargo bench -p mae-data`.
#![allow(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mae_data::augment::{Augment, Transform, IMAGENET_MEAN, IMAGENET_STD};
use mae_data::loader::{Loader, LoaderConfig};
use mae_data::writer::DatasetWriter;
use mae_data::{prepare, Dataset, PrepareOptions, SourceKind, SplitName};

/// A 256×256 RGB dataset of smooth synthetic images (written directly as shards).
fn rgb256(dir: &Path, n: usize) -> Arc<Dataset> {
    let out = dir.join("rgb256");
    let mut w = DatasetWriter::create(&out, 256, 3, true).expect("writer");
    let mut px = vec![0u8; 256 * 256 * 3];
    for i in 0..n {
        for (j, p) in px.iter_mut().enumerate() {
            *p = ((j / 3 % 256) * 3 + (j / 768) + i * 7) as u8;
        }
        w.push(SplitName::Train, &px, (i % 10) as i32)
            .expect("push");
    }
    w.finish(Vec::new(), "synthetic".into(), Vec::new())
        .expect("finish");
    Arc::new(Dataset::open(&out).expect("open"))
}

fn fmnist(dir: &Path) -> Arc<Dataset> {
    let out = dir.join("fmnist");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    let mut opts = PrepareOptions::new(SourceKind::Idx, src, &out);
    opts.force = true;
    prepare(&opts).expect("prepare");
    Arc::new(Dataset::open(&out).expect("open"))
}

/// Times `iters` batches (looping over epochs) and returns the time they took.
fn run(loader: &Loader, iters: u64) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    let mut epoch = 0;
    while done < iters {
        for batch in loader.epoch(epoch, 0) {
            criterion::black_box(batch.expect("batch"));
            done += 1;
            if done == iters {
                break;
            }
        }
        epoch += 1;
    }
    start.elapsed()
}

fn loader_throughput(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("mae-data-bench");
    let cases = [
        (
            "rgb224_from_256",
            rgb256(&dir, 512),
            224usize,
            IMAGENET_MEAN.to_vec(),
            IMAGENET_STD.to_vec(),
            64usize,
        ),
        ("gray28", fmnist(&dir), 28, vec![0.286], vec![0.353], 256),
    ];
    let mut group = c.benchmark_group("loader");
    group.sample_size(10);
    for (name, data, size, mean, std, batch_size) in cases {
        let augment = Augment::new(Transform::pretrain(), size, &mean, &std, 0).expect("augment");
        let loader = Loader::new(
            data,
            SplitName::Train,
            augment,
            LoaderConfig {
                batch_size,
                ..LoaderConfig::default()
            },
        )
        .expect("loader");
        group.throughput(Throughput::Elements(batch_size as u64));
        group.bench_function(name, |b| b.iter_custom(|iters| run(&loader, iters)));
    }
    group.finish();
}

criterion_group!(benches, loader_throughput);
criterion_main!(benches);
