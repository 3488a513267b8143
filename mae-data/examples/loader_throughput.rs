//! Loader throughput on a prepared dataset, as `tools/bench_data.sh` runs it side by side with
//! torchvision's DataLoader: the pretraining transform (RandomResizedCrop 0.2–1 bicubic + flip +
//! ImageNet normalize) into `f32` NCHW batches, images/s over whole batches after one warm-up
//! batch. One JSON line on stdout.
//!
//! `cargo run --release -p mae-data --example loader_throughput -- DIR [--size 224]
//!  [--batch 64] [--workers 2] [--batches 40]`
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use mae_data::augment::{Augment, Transform, IMAGENET_MEAN, IMAGENET_STD};
use mae_data::loader::{Loader, LoaderConfig};
use mae_data::{Dataset, SplitName};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: loader_throughput DIR [--size N] [--batch N] [--workers N] [--batches N]")?;
    let (mut size, mut batch, mut workers, mut batches) = (224usize, 64usize, 2usize, 40usize);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .ok_or(format!("{flag} needs a value"))?
            .parse()?;
        match flag.as_str() {
            "--size" => size = value,
            "--batch" => batch = value,
            "--workers" => workers = value,
            "--batches" => batches = value,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let data = Arc::new(Dataset::open(&dir)?);
    let encoding = data.manifest().encoding.to_string();
    let augment = Augment::new(
        Transform::pretrain(),
        size,
        &IMAGENET_MEAN,
        &IMAGENET_STD,
        0,
    )?;
    let config = LoaderConfig {
        batch_size: batch,
        workers,
        drop_last: true,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(Arc::clone(&data), SplitName::Train, augment, config)?;
    let (mut done, mut epoch) = (0usize, 0u64);
    let mut start = Instant::now();
    'outer: loop {
        for b in loader.epoch(epoch, 0) {
            std::hint::black_box(b?);
            if done == 0 {
                start = Instant::now(); // after the warm-up batch
            }
            done += 1;
            if done > batches {
                break 'outer;
            }
        }
        epoch += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"impl\":\"mae-data\",\"encoding\":\"{encoding}\",\"size\":{size},\"batch\":{batch},\"workers\":{workers},\"batches\":{batches},\"img_per_s\":{:.1}}}",
        (batches * batch) as f64 / secs
    );
    Ok(())
}
