//! The fused CPU block kernel (`mae_core::kernels::block`) against the same block composed of
//! dfdx ops (`Block::forward_composed`): the output and the gradient of the input and of all 12
//! parameters, with and without drop-path scales, at the token counts of the `tiny` encoder (13)
//! and decoder (50). The composed block is itself checked against PyTorch by `parity.rs`.
#![allow(clippy::unwrap_used)]

use mae_core::dfdx::prelude::*;
use mae_core::layers::{Block, BranchScales, MaeDevice};
use mae_core::patch::PatchGeometry;
use mae_core::preset::Dims;
use mae_core::presets::Parity;
use mae_core::weights::collect_gradients;

/// 48 wide, MLP 192, 4 heads of 12.
type Tr = Dims<48, 192, 144, 4, 1>;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// Output, input gradient and parameter gradients (by name) of `sum(out · w)`.
type Outcome = (Vec<f32>, Vec<f32>, Vec<(String, Vec<f32>)>);

fn run(
    block: &Block<Tr, f32, Cpu>,
    x: &Tensor<(usize, usize, Const<48>), f32, Cpu>,
    w: &Tensor<(usize, usize, Const<48>), f32, Cpu>,
    scales: Option<&BranchScales>,
    fused: bool,
) -> Outcome {
    // a leaky tape keeps every gradient, the input's included
    let input = x.clone().traced(Gradients::leaky());
    let out = if fused {
        block.forward_scaled(input, scales).unwrap()
    } else {
        block.forward_composed(input, scales).unwrap()
    };
    let value = out.as_vec();
    let grads = (out * w.clone()).sum::<Rank0, _>().backward();
    let dx = grads.get(x).as_vec();
    let params = collect_gradients(block, PatchGeometry::of::<Parity>(), &grads)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect();
    (value, dx, params)
}

#[test]
fn the_fused_block_matches_the_composed_one_in_value_and_every_gradient() {
    assert!(
        mae_core::kernels::fused(),
        "the fused kernel is the default on Cpu"
    );
    let dev = Cpu::seed_from_u64(11);
    let mut block = Block::<Tr, f32, Cpu>::try_build(&dev).unwrap();
    // non-trivial norms and biases, so their gradients and effects are checked too
    block.norm1.weight = dev.sample_normal_like(&(Const::<48>,)) + 1.0;
    block.norm1.bias = dev.sample_normal_like(&(Const::<48>,));
    block.norm2.weight = dev.sample_normal_like(&(Const::<48>,)) + 1.0;
    block.attn.qkv.bias = dev.sample_normal_like(&(Const::<144>,)) * 0.1;
    block.mlp.fc1.bias = dev.sample_normal_like(&(Const::<192>,)) * 0.1;
    for (batch, tokens) in [(3, 13), (2, 50)] {
        let shape = (batch, tokens, Const::<48>);
        let x = dev.sample_normal_like(&shape);
        let w = dev.sample_normal_like(&shape);
        let scales = BranchScales {
            attn: (0..batch).map(|i| [0.0, 1.25, 2.0][i % 3]).collect(),
            mlp: (0..batch).map(|i| [1.25, 0.0, 0.5][i % 3]).collect(),
        };
        for s in [None, Some(&scales)] {
            let (v1, dx1, p1) = run(&block, &x, &w, s, true);
            let (v2, dx2, p2) = run(&block, &x, &w, s, false);
            let what = format!("batch {batch}, tokens {tokens}, scaled {}", s.is_some());
            let e = rel_err(&v1, &v2);
            assert!(e < 1e-5, "{what}: output relative error {e:.2e}");
            let e = rel_err(&dx1, &dx2);
            assert!(e < 1e-5, "{what}: input gradient relative error {e:.2e}");
            assert_eq!(p1.len(), 12);
            for ((name, a), (name2, b)) in p1.iter().zip(&p2) {
                assert_eq!(name, name2);
                let e = rel_err(a, b);
                assert!(e < 1e-5, "{what}: {name} gradient relative error {e:.2e}");
            }
        }
    }
}

#[test]
fn a_wrong_number_of_scales_is_an_error_not_a_panic() {
    let dev = Cpu::seed_from_u64(1);
    let block = Block::<Tr, f32, Cpu>::try_build(&dev).unwrap();
    let x = dev.sample_normal_like(&(2, 5, Const::<48>));
    let scales = BranchScales {
        attn: vec![1.0; 3],
        mlp: vec![1.0; 3],
    };
    assert!(block.forward_scaled(x, Some(&scales)).is_err());
}

/// The patched dfdx's storage access (vendor/dfdx/PATCHES.md, change 1): a contiguous tensor's
/// values borrowed in place, written in place when it is the only holder and copied on write when
/// a clone shares the storage; a broadcast (non-contiguous) tensor is not handed out.
#[test]
fn storage_is_read_and_written_in_place() {
    let dev = Cpu::default();
    let mut a = dev.tensor([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    assert_eq!(
        <Cpu as MaeDevice>::tensor_host_slice(&a),
        Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..])
    );
    let shared = a.clone();
    let p = <Cpu as MaeDevice>::tensor_host_slice_mut(&mut a).unwrap();
    p[0] = 10.0;
    let ptr = p.as_ptr();
    // the clone kept its values (copy on write); the write landed in `a`
    assert_eq!(shared.as_vec(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(a.as_vec(), [10.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    drop(shared);
    // now the only holder: in place, the same buffer
    let q = <Cpu as MaeDevice>::tensor_host_slice_mut(&mut a).unwrap();
    q[5] = 60.0;
    assert_eq!(q.as_ptr(), ptr);
    assert_eq!(a.as_vec(), [10.0, 2.0, 3.0, 4.0, 5.0, 60.0]);
    // a broadcast view shares one row's storage: not row-major, not handed out
    let row = dev.tensor([1.0f32, 2.0, 3.0]);
    let wide: Tensor<Rank2<2, 3>, f32, Cpu> = row.broadcast();
    assert!(!wide.is_contiguous());
    assert_eq!(<Cpu as MaeDevice>::tensor_host_slice(&wide), None);
}

/// The patched dfdx's `accurate_gelu` backward (vendor/dfdx/PATCHES.md, change 2) is the exact
/// derivative Φ(x) + x·φ(x), computed here in f64.
#[test]
fn dfdx_accurate_gelu_gradient_is_the_exact_one() {
    let dev = Cpu::default();
    let xs = [-3.0f32, -2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0, 3.0];
    let x = dev.tensor(xs);
    let g = x.leaky_trace().accurate_gelu().sum().backward();
    let erf = |v: f64| libm::erf(v);
    for (&x0, &got) in xs.iter().zip(&g.get(&x).as_vec()) {
        let v = x0 as f64;
        let phi = (-v * v / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let exact = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2)) + v * phi;
        assert!(
            (got as f64 - exact).abs() < 1e-5,
            "x {x0}: gradient {got}, exact {exact}"
        );
    }
}
