//! One MAE pretraining step (forward, backward, AdamW update) per preset, on the CPU.
//! `cargo bench -p mae-train`; side by side with PyTorch: `tools/bench_vs_pytorch.sh`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use mae_core::Preset;
use mae_train::bench::{time_train_step, StepBench};

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for (preset, batch) in [(Preset::Tiny, 64usize), (Preset::Tiny, 256)] {
        group.bench_function(format!("{preset}/b{batch}"), |b| {
            b.iter_custom(|iters| {
                let timing = time_train_step(
                    &StepBench {
                        preset,
                        batch,
                        steps: iters as usize,
                        ..StepBench::default()
                    },
                    &mae_train::dist::Comm::single(),
                )
                .expect("benchmark step");
                std::time::Duration::from_secs_f64(timing.all_s.iter().sum())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
