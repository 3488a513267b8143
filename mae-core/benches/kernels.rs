//! Our CPU kernels against dfdx's own ops, under criterion: one transformer block forward and
//! backward at the `tiny` encoder's and decoder's shapes for a batch of 256 (fused kernel vs the
//! block composed of dfdx ops), and the matrix product behind it (`kernels::gemm` vs dfdx's
//! `matmul`). `cargo bench -p mae-core`.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use mae_core::dfdx::prelude::*;
use mae_core::kernels::gemm::{matmul, MatRef, Threads};
use mae_core::layers::Block;
use mae_core::preset::{Dims, TransformerDims};

/// `tiny`'s encoder (192 wide, 3 heads) and decoder (128 wide, 4 heads).
type Encoder = Dims<192, 768, 576, 3, 6>;
type Decoder = Dims<128, 512, 384, 4, 2>;

fn block<Tr: TransformerDims>(c: &mut Criterion, name: &str, tokens: usize) {
    let dev = Cpu::seed_from_u64(0);
    dev.enable_cache();
    let blk = Block::<Tr, f32, Cpu>::try_build(&dev).unwrap();
    let x = dev.sample_normal_like(&(256usize, tokens, Tr::Model::default()));
    let mut group = c.benchmark_group(format!("block/{name}"));
    group.sample_size(10);
    for fused in [true, false] {
        group.bench_function(if fused { "fused" } else { "dfdx" }, |b| {
            mae_core::kernels::set_fused(fused);
            b.iter(|| {
                let y = blk
                    .forward_scaled(x.clone().traced(blk.alloc_grads()), None)
                    .unwrap();
                y.sum::<Rank0, _>().backward()
            })
        });
    }
    mae_core::kernels::set_fused(true);
    group.finish();
}

fn blocks(c: &mut Criterion) {
    block::<Encoder>(c, "tiny-encoder-b256-t13", 13);
    block::<Decoder>(c, "tiny-decoder-b256-t50", 50);
}

fn gemm(c: &mut Criterion) {
    // the qkv projection of the tiny encoder at batch 256: [3328, 192] x [192, 576]
    let (m, k, n) = (3328usize, 192usize, 576usize);
    let dev = Cpu::default();
    let a: Tensor<(usize, Const<192>), f32, Cpu> = dev.sample_normal_like(&(m, Const));
    let b: Tensor<(Const<192>, Const<576>), f32, Cpu> = dev.sample_normal();
    let (av, bv) = (a.as_vec(), b.as_vec());
    let mut group = c.benchmark_group("matmul/3328x192x576");
    group.sample_size(20);
    group.bench_function("kernels::gemm", |bench| {
        let mut out = vec![0.0; m * n];
        bench.iter(|| {
            matmul(
                &mut out,
                n,
                m,
                n,
                k,
                MatRef::rows(&av, k),
                MatRef::rows(&bv, n),
                1.0,
                false,
                Threads::All,
            )
        })
    });
    group.bench_function("dfdx", |bench| bench.iter(|| a.clone().matmul(b.clone())));
    group.finish();
}

criterion_group!(benches, blocks, gemm);
criterion_main!(benches);
