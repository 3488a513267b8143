//! Our own CPU kernels, wired into dfdx's tape from outside (`Tape::add_backward_op`).
//!
//! - [`gemm`]: a bounds-checked front to the `gemm` crate 0.19 (AVX-512 where the CPU has it,
//!   all cores), which dfdx 0.13's own matmul (gemm 0.15, AVX2, one thread) is not.
//! - [`block`]: the whole pre-norm transformer block, forward and backward, as one op.
//!
//! [`crate::MaeDevice`] routes `Cpu` through these; other devices use the plain dfdx ops, and so
//! does `Cpu` after [`set_fused(false)`](set_fused) (the reference the kernels are tested
//! against, and the `--kernels dfdx` of `mae bench`).
//!
//! PyTorch counterpart: the fused CPU kernels (MKL/oneDNN sgemm, fused softmax, LayerNorm) that
//! `torch` calls under `nn.Linear`, `F.scaled_dot_product_attention` and `nn.LayerNorm`.

pub mod block;
pub mod gemm;

use std::sync::atomic::{AtomicBool, Ordering};

use dfdx::prelude::*;
use dfdx::tensor::CpuError;

use crate::error::MaeError;
use crate::gelu::{gelu_derivative, gelu_value};
use crate::host::{dev_err, host_tensor, host_vec};
use crate::layers::{Act, Block, BranchScales, MaeDevice};
use crate::preset::TransformerDims;
use block::{block_backward, block_forward, BlockDims, BlockTensors, Scales};

static FUSED: AtomicBool = AtomicBool::new(true);

/// Whether `Cpu` uses the fused kernels (the default) or dfdx's own ops.
pub fn fused() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// Chooses, for the whole process, between the fused kernels (`true`, the default) and dfdx's own
/// ops (`false`). Both compute the same function; the switch exists for tests and benchmarks.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed)
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

fn view(s: &Option<BranchScales>) -> Option<Scales<'_>> {
    s.as_ref().map(|s| Scales {
        attn: &s.attn,
        mlp: &s.mlp,
    })
}

/// Host copies of a block's parameters (the fallback of [`with_params`]).
fn host_params<Tr: TransformerDims>(
    blk: &Block<Tr, f32, Cpu>,
) -> Result<BlockTensors<Vec<f32>>, MaeError> {
    Ok(BlockTensors {
        norm1_weight: host_vec(&blk.norm1.weight)?,
        norm1_bias: host_vec(&blk.norm1.bias)?,
        qkv_weight: host_vec(&blk.attn.qkv.weight)?,
        qkv_bias: host_vec(&blk.attn.qkv.bias)?,
        proj_weight: host_vec(&blk.attn.proj.weight)?,
        proj_bias: host_vec(&blk.attn.proj.bias)?,
        norm2_weight: host_vec(&blk.norm2.weight)?,
        norm2_bias: host_vec(&blk.norm2.bias)?,
        fc1_weight: host_vec(&blk.mlp.fc1.weight)?,
        fc1_bias: host_vec(&blk.mlp.fc1.bias)?,
        fc2_weight: host_vec(&blk.mlp.fc2.weight)?,
        fc2_bias: host_vec(&blk.mlp.fc2.bias)?,
    })
}

/// A block's parameters borrowed from their storage (the patched dfdx's `host_data`), when every
/// one is laid out row-major, as parameters are.
fn borrowed_params<Tr: TransformerDims>(blk: &Block<Tr, f32, Cpu>) -> Option<BlockTensors<&[f32]>> {
    use crate::layers::cpu_slice;
    Some(BlockTensors {
        norm1_weight: cpu_slice(&blk.norm1.weight)?,
        norm1_bias: cpu_slice(&blk.norm1.bias)?,
        qkv_weight: cpu_slice(&blk.attn.qkv.weight)?,
        qkv_bias: cpu_slice(&blk.attn.qkv.bias)?,
        proj_weight: cpu_slice(&blk.attn.proj.weight)?,
        proj_bias: cpu_slice(&blk.attn.proj.bias)?,
        norm2_weight: cpu_slice(&blk.norm2.weight)?,
        norm2_bias: cpu_slice(&blk.norm2.bias)?,
        fc1_weight: cpu_slice(&blk.mlp.fc1.weight)?,
        fc1_bias: cpu_slice(&blk.mlp.fc1.bias)?,
        fc2_weight: cpu_slice(&blk.mlp.fc2.weight)?,
        fc2_bias: cpu_slice(&blk.mlp.fc2.bias)?,
    })
}

/// Calls `f` with the block's parameters as host slices: borrowed in place, else copied.
fn with_params<Tr: TransformerDims, R>(
    blk: &Block<Tr, f32, Cpu>,
    f: impl FnOnce(&BlockTensors<&[f32]>) -> R,
) -> Result<R, MaeError> {
    if let Some(p) = borrowed_params(blk) {
        return Ok(f(&p));
    }
    let params = host_params(blk)?;
    Ok(f(&params.as_ref().map(|v| v.as_slice())))
}

fn take_grad<S: Shape>(
    grads: &mut Gradients<f32, Cpu>,
    t: &Tensor<S, f32, Cpu>,
) -> Result<Vec<f32>, CpuError> {
    Ok(std::mem::take(&mut **grads.get_or_alloc_mut(t)?))
}

fn put_grad<S: Shape>(
    grads: &mut Gradients<f32, Cpu>,
    t: &Tensor<S, f32, Cpu>,
    g: Vec<f32>,
) -> Result<(), CpuError> {
    **grads.get_or_alloc_mut(t)? = g;
    Ok(())
}

/// Takes a block's parameter gradients out of `grads` (allocating zeros for those not there yet),
/// without copying; [`put_grads`] puts them back.
fn take_grads<Tr: TransformerDims>(
    grads: &mut Gradients<f32, Cpu>,
    blk: &Block<Tr, f32, Cpu>,
) -> Result<BlockTensors<Vec<f32>>, CpuError> {
    Ok(BlockTensors {
        norm1_weight: take_grad(grads, &blk.norm1.weight)?,
        norm1_bias: take_grad(grads, &blk.norm1.bias)?,
        qkv_weight: take_grad(grads, &blk.attn.qkv.weight)?,
        qkv_bias: take_grad(grads, &blk.attn.qkv.bias)?,
        proj_weight: take_grad(grads, &blk.attn.proj.weight)?,
        proj_bias: take_grad(grads, &blk.attn.proj.bias)?,
        norm2_weight: take_grad(grads, &blk.norm2.weight)?,
        norm2_bias: take_grad(grads, &blk.norm2.bias)?,
        fc1_weight: take_grad(grads, &blk.mlp.fc1.weight)?,
        fc1_bias: take_grad(grads, &blk.mlp.fc1.bias)?,
        fc2_weight: take_grad(grads, &blk.mlp.fc2.weight)?,
        fc2_bias: take_grad(grads, &blk.mlp.fc2.bias)?,
    })
}

fn put_grads<Tr: TransformerDims>(
    grads: &mut Gradients<f32, Cpu>,
    blk: &Block<Tr, f32, Cpu>,
    g: BlockTensors<Vec<f32>>,
) -> Result<(), CpuError> {
    put_grad(grads, &blk.norm1.weight, g.norm1_weight)?;
    put_grad(grads, &blk.norm1.bias, g.norm1_bias)?;
    put_grad(grads, &blk.attn.qkv.weight, g.qkv_weight)?;
    put_grad(grads, &blk.attn.qkv.bias, g.qkv_bias)?;
    put_grad(grads, &blk.attn.proj.weight, g.proj_weight)?;
    put_grad(grads, &blk.attn.proj.bias, g.proj_bias)?;
    put_grad(grads, &blk.norm2.weight, g.norm2_weight)?;
    put_grad(grads, &blk.norm2.bias, g.norm2_bias)?;
    put_grad(grads, &blk.mlp.fc1.weight, g.fc1_weight)?;
    put_grad(grads, &blk.mlp.fc1.bias, g.fc1_bias)?;
    put_grad(grads, &blk.mlp.fc2.weight, g.fc2_weight)?;
    put_grad(grads, &blk.mlp.fc2.bias, g.fc2_bias)
}

/// One transformer block on `Cpu` as a single fused op (see [`block`]).
pub(crate) fn block_cpu<Tr: TransformerDims, T: Tape<f32, Cpu>>(
    blk: &Block<Tr, f32, Cpu>,
    x: Act<Tr::Model, Cpu, T>,
    scales: Option<&BranchScales>,
) -> Result<Act<Tr::Model, Cpu, T>, MaeError> {
    let x = x.try_contiguous().map_err(dev_err)?;
    let (x, mut tape) = x.split_tape();
    let shape = *x.shape(); // scales checked by `Block::forward_scaled`, the one caller
    let dims = BlockDims {
        batch: shape.0,
        tokens: shape.1,
        dim: Tr::DIM,
        heads: Tr::NUM_HEADS,
        hidden: <Tr::Mlp as ConstDim>::SIZE,
    };
    let scales = scales.cloned();
    let copied;
    let input = match crate::layers::cpu_slice(&x) {
        Some(input) => input,
        None => {
            copied = host_vec(&x)?;
            &copied[..]
        }
    };
    let (y, saved) = with_params(blk, |p| {
        block_forward(&dims, p, input, view(&scales), T::OWNS_TAPE)
    })?;
    let out = host_tensor(x.device(), &y, shape)?;
    drop(y);
    if let Some(saved) = saved {
        let out_id = out.clone();
        let blk = blk.clone();
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&out_id)?;
            // borrowed out of the gradient map for the duration (no copy), then put back
            let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_id)?);
            // the parameters' gradients are taken out of the map (no copy), accumulated into in
            // place by the kernel, and put back
            let mut g = take_grads(grads, &blk)?;
            // the parameters borrowed in place (they do not change between the two passes)
            // (copying a parameter, the fallback, can only fail to allocate on Cpu)
            let dx = with_params(&blk, |p| {
                block_backward(
                    &dims,
                    p,
                    &saved,
                    view(&scales),
                    &dy,
                    &mut g.as_mut().map(|v| v.as_mut_slice()),
                )
            })
            .map_err(|_| dfdx::tensor::CpuError::OutOfMemory)?;
            put_grads(grads, &blk, g)?;
            **grads.get_or_alloc_mut(&out_id)? = dy;
            add_into(grads.get_or_alloc_mut(&x)?, &dx);
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}

/// The CPU device: host buffers in place, our fused GELU and block kernels.
impl MaeDevice for Cpu {
    fn host_slice_mut(buffer: &mut <Self as Storage<f32>>::Vec) -> Option<&mut [f32]> {
        Some(&mut buffer[..])
    }

    fn keeps_host_memory() -> bool {
        true
    }

    fn tensor_host_slice<S: Shape, T>(t: &Tensor<S, f32, Self, T>) -> Option<&[f32]> {
        crate::layers::cpu_slice(t)
    }

    fn tensor_host_slice_mut<S: Shape, T>(t: &mut Tensor<S, f32, Self, T>) -> Option<&mut [f32]> {
        crate::layers::cpu_slice_mut(t)
    }

    fn gelu<S: Shape, T: Tape<f32, Self>>(
        x: Tensor<S, f32, Self, T>,
    ) -> Result<Tensor<S, f32, Self, T>, MaeError> {
        let x = x.try_contiguous().map_err(dev_err)?;
        let (x, mut tape) = x.split_tape();
        // the input is read in place; the backward keeps the tensor (shared storage, no copy)
        let value: Vec<f32> = match crate::layers::cpu_slice(&x) {
            Some(input) => input.iter().map(|&v| gelu_value(v)).collect(),
            None => x.as_vec().iter().map(|&v| gelu_value(v)).collect(),
        };
        let out = host_tensor(x.device(), &value, *x.shape())?;
        if T::OWNS_TAPE {
            let out_id = out.clone();
            tape.add_backward_op(move |grads| {
                // the output's gradient borrowed out of the map (no copy), then put back
                let grad_out = std::mem::take(&mut **grads.get_or_alloc_mut(&out_id)?);
                let input_copy;
                let input = match crate::layers::cpu_slice(&x) {
                    Some(input) => input,
                    None => {
                        input_copy = x.as_vec();
                        &input_copy[..]
                    }
                };
                let grad_in = grads.get_or_alloc_mut(&x)?;
                for ((g, &v), &go) in grad_in.iter_mut().zip(input).zip(&grad_out) {
                    *g += gelu_derivative(v) * go;
                }
                **grads.get_or_alloc_mut(&out_id)? = grad_out;
                Ok(())
            });
        }
        Ok(out.put_tape(tape))
    }

    fn block<Tr: TransformerDims, T: Tape<f32, Self>>(
        block: &Block<Tr, f32, Self>,
        x: Act<Tr::Model, Self, T>,
        scales: Option<&BranchScales>,
    ) -> Result<Act<Tr::Model, Self, T>, MaeError> {
        if fused() {
            block_cpu(block, x, scales)
        } else {
            block.forward_composed(x, scales)
        }
    }
}
