//! The pre-norm transformer block as one fused CPU kernel, forward and backward, on host slices.
//!
//! PyTorch counterpart: timm's `vision_transformer.Block` (`x + drop_path(attn(norm1(x)))`, then
//! `x + drop_path(mlp(norm2(x)))`, LayerNorm eps 1e-6, exact GELU, `qkv_bias=True`) together
//! with its autograd backward.
//!
//! Why fused: dfdx keeps tensor storage private, so every op added from outside pays a copy in
//! and out. Doing the whole block in one op pays it once per block (the input, the output and
//! their gradients) and lets every product run through [`super::gemm`] on all cores; the
//! activations the backward needs stay in host vectors owned by the op.

use std::borrow::Cow;

use rayon::prelude::*;

use super::gemm::{matmul, MatRef, Threads};
use crate::gelu::{gelu_derivative, gelu_value};
use crate::layers::LAYER_NORM_EPS;

/// Rows per parallel task of the row-wise passes (LayerNorm, residuals).
const ROWS_PER_TASK: usize = 64;
/// Elements per parallel task of the elementwise passes (GELU).
const ELEMS_PER_TASK: usize = 16 * 1024;

/// The sizes of one block application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDims {
    /// Samples.
    pub batch: usize,
    /// Tokens per sample.
    pub tokens: usize,
    /// Token width `D`.
    pub dim: usize,
    /// Attention heads (`D` divisible by it).
    pub heads: usize,
    /// MLP hidden width.
    pub hidden: usize,
}

impl BlockDims {
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

/// One value per parameter of a block, named as in the reference's state_dict
/// (`norm1.weight`, `attn.qkv.weight`, …). Used for the parameters (`&[f32]`, PyTorch layouts:
/// Linear weights `[out, in]`) and for their gradients (`Vec<f32>`).
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct BlockTensors<T> {
    pub norm1_weight: T,
    pub norm1_bias: T,
    pub qkv_weight: T,
    pub qkv_bias: T,
    pub proj_weight: T,
    pub proj_bias: T,
    pub norm2_weight: T,
    pub norm2_bias: T,
    pub fc1_weight: T,
    pub fc1_bias: T,
    pub fc2_weight: T,
    pub fc2_bias: T,
}

impl<T> BlockTensors<T> {
    /// Applies `f` to every entry, in state_dict order.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> BlockTensors<U> {
        BlockTensors {
            norm1_weight: f(self.norm1_weight),
            norm1_bias: f(self.norm1_bias),
            qkv_weight: f(self.qkv_weight),
            qkv_bias: f(self.qkv_bias),
            proj_weight: f(self.proj_weight),
            proj_bias: f(self.proj_bias),
            norm2_weight: f(self.norm2_weight),
            norm2_bias: f(self.norm2_bias),
            fc1_weight: f(self.fc1_weight),
            fc1_bias: f(self.fc1_bias),
            fc2_weight: f(self.fc2_weight),
            fc2_bias: f(self.fc2_bias),
        }
    }

    /// Borrows every entry mutably.
    pub fn as_mut(&mut self) -> BlockTensors<&mut T> {
        BlockTensors {
            norm1_weight: &mut self.norm1_weight,
            norm1_bias: &mut self.norm1_bias,
            qkv_weight: &mut self.qkv_weight,
            qkv_bias: &mut self.qkv_bias,
            proj_weight: &mut self.proj_weight,
            proj_bias: &mut self.proj_bias,
            norm2_weight: &mut self.norm2_weight,
            norm2_bias: &mut self.norm2_bias,
            fc1_weight: &mut self.fc1_weight,
            fc1_bias: &mut self.fc1_bias,
            fc2_weight: &mut self.fc2_weight,
            fc2_bias: &mut self.fc2_bias,
        }
    }

    /// Borrows every entry.
    pub fn as_ref(&self) -> BlockTensors<&T> {
        BlockTensors {
            norm1_weight: &self.norm1_weight,
            norm1_bias: &self.norm1_bias,
            qkv_weight: &self.qkv_weight,
            qkv_bias: &self.qkv_bias,
            proj_weight: &self.proj_weight,
            proj_bias: &self.proj_bias,
            norm2_weight: &self.norm2_weight,
            norm2_bias: &self.norm2_bias,
            fc1_weight: &self.fc1_weight,
            fc1_bias: &self.fc1_bias,
            fc2_weight: &self.fc2_weight,
            fc2_bias: &self.fc2_bias,
        }
    }
}

/// Per-sample multipliers of the two residual branches (drop path), `[batch]` each.
#[derive(Debug, Clone, Copy)]
pub struct Scales<'a> {
    /// Attention branch.
    pub attn: &'a [f32],
    /// MLP branch.
    pub mlp: &'a [f32],
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Default)]
pub struct BlockSaved {
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    attn_out: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
}

/// `y = x·Wᵀ + b` for `x: [rows, input]`, `W: [output, input]`.
pub fn linear(x: &[f32], rows: usize, input: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let output = b.len();
    let mut y = Vec::with_capacity(rows * output);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    matmul(
        &mut y,
        output,
        rows,
        output,
        input,
        MatRef::rows(x, input),
        MatRef::transposed(w, input),
        1.0,
        true,
        Threads::All,
    );
    y
}

/// The backward of [`linear`]: returns `dx = dy·W` and adds `dyᵀ·x` into `dw` and `Σ_rows dy`
/// into `db` (gradients accumulate, as on dfdx's tape).
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    rows: usize,
    input: usize,
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> Vec<f32> {
    let output = w.len() / input.max(1);
    matmul(
        dw,
        input,
        output,
        input,
        rows,
        MatRef::transposed(dy, output),
        MatRef::rows(x, input),
        1.0,
        true,
        Threads::All,
    );
    add_column_sums(db, dy);
    let mut dx = vec![0.0; rows * input];
    matmul(
        &mut dx,
        input,
        rows,
        input,
        output,
        MatRef::rows(dy, output),
        MatRef::rows(w, input),
        1.0,
        false,
        Threads::All,
    );
    dx
}

/// Adds the column sums of `x: [rows, sums.len()]` into `sums`.
fn add_column_sums(sums: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(sums.len()) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
}

/// LayerNorm over rows of width `w.len()`: returns `(x̂, 1/σ, x̂·w + b)`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = w.len();
    let rows = x.len() / width;
    let mut xhat = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    let mut h = vec![0.0; x.len()];
    xhat.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(h.par_chunks_mut(width * ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(((xhat, h), rstd), x)| {
            for (((xr, xh), hr), r) in x
                .chunks_exact(width)
                .zip(xhat.chunks_exact_mut(width))
                .zip(h.chunks_exact_mut(width))
                .zip(rstd.iter_mut())
            {
                let mean = xr.iter().sum::<f32>() / width as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                let inv = 1.0 / (var + LAYER_NORM_EPS as f32).sqrt();
                *r = inv;
                for (((o, hv), &v), (&wv, &bv)) in xh
                    .iter_mut()
                    .zip(hr.iter_mut())
                    .zip(xr)
                    .zip(w.iter().zip(b))
                {
                    *o = (v - mean) * inv;
                    *hv = *o * wv + bv;
                }
            }
        });
    (xhat, rstd, h)
}

/// The backward of [`layer_norm`] given `dh`: adds `dx` into `dx_acc` and the parameters'
/// gradients into `dw`, `db`.
pub fn layer_norm_backward(
    dh: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx_acc: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let width = w.len();
    dx_acc
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(dh.par_chunks(width * ROWS_PER_TASK))
        .zip(xhat.par_chunks(width * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dh), xhat), rstd)| {
            for (((dxr, dhr), xr), &r) in dx
                .chunks_exact_mut(width)
                .zip(dh.chunks_exact(width))
                .zip(xhat.chunks_exact(width))
                .zip(rstd)
            {
                let (mut mean_g, mut mean_gx) = (0.0f32, 0.0f32);
                for ((&g, &wv), &xv) in dhr.iter().zip(w).zip(xr) {
                    let gx = g * wv;
                    mean_g += gx;
                    mean_gx += gx * xv;
                }
                mean_g /= width as f32;
                mean_gx /= width as f32;
                for (((d, &g), &wv), &xv) in dxr.iter_mut().zip(dhr).zip(w).zip(xr) {
                    *d += r * (g * wv - mean_g - xv * mean_gx);
                }
            }
        });
    for (dhr, xr) in dh.chunks_exact(width).zip(xhat.chunks_exact(width)) {
        for (((a, b), &g), &xv) in dw.iter_mut().zip(db.iter_mut()).zip(dhr).zip(xr) {
            *a += g * xv;
            *b += g;
        }
    }
}

/// `out[r] = base[r] + scale[sample(r)]·branch[r]` (no scale: 1), in place on `base`.
fn add_branch(base: &mut [f32], branch: &[f32], scales: Option<&[f32]>, row_len: usize) {
    match scales {
        None => base
            .par_chunks_mut(ELEMS_PER_TASK)
            .zip(branch.par_chunks(ELEMS_PER_TASK))
            .for_each(|(o, b)| o.iter_mut().zip(b).for_each(|(o, b)| *o += b)),
        Some(s) => base
            .par_chunks_mut(row_len)
            .zip(branch.par_chunks(row_len))
            .zip(s.par_iter())
            .for_each(|((o, b), &s)| o.iter_mut().zip(b).for_each(|(o, b)| *o += s * b)),
    }
}

/// `x` with each sample's rows multiplied by its scale; `None` borrows `x` unchanged (no copy on
/// the unscaled path that pretraining takes).
fn scale_rows<'a>(x: &'a [f32], scales: Option<&[f32]>, row_len: usize) -> Cow<'a, [f32]> {
    match scales {
        None => Cow::Borrowed(x),
        Some(s) => {
            let mut out = x.to_vec();
            out.par_chunks_mut(row_len)
                .zip(s.par_iter())
                .for_each(|(o, &s)| o.iter_mut().for_each(|v| *v *= s));
            Cow::Owned(out)
        }
    }
}

/// Multi-head attention core on `qkv: [rows, 3D]`: returns the heads' outputs `[rows, D]` and
/// the attention probabilities `[batch, heads, tokens, tokens]`.
fn attention(d: &BlockDims, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (s, dim, heads, dh) = (d.tokens, d.dim, d.heads, d.head_dim());
    let q3 = 3 * dim;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0; d.rows() * dim];
    let mut probs = vec![0.0; d.batch * heads * s * s];
    out.par_chunks_mut(s * dim)
        .zip(probs.par_chunks_mut(heads * s * s))
        .zip(qkv.par_chunks(s * q3))
        .for_each(|((o, pr), x)| {
            for h in 0..heads {
                let p = &mut pr[h * s * s..(h + 1) * s * s];
                let q = MatRef::rows(&x[h * dh..], q3);
                let kt = MatRef::transposed(&x[dim + h * dh..], q3);
                matmul(p, s, s, s, dh, q, kt, scale, false, Threads::One);
                for row in p.chunks_exact_mut(s) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let mut sum = 0.0;
                    for v in row.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|v| *v *= inv);
                }
                let v = MatRef::rows(&x[2 * dim + h * dh..], q3);
                matmul(
                    &mut o[h * dh..],
                    dim,
                    s,
                    dh,
                    s,
                    MatRef::rows(p, s),
                    v,
                    1.0,
                    false,
                    Threads::One,
                );
            }
        });
    (out, probs)
}

/// The backward of [`attention`]: `d_out: [rows, D]` to `d_qkv: [rows, 3D]`.
fn attention_backward(d: &BlockDims, qkv: &[f32], probs: &[f32], d_out: &[f32]) -> Vec<f32> {
    let (s, dim, heads, dh) = (d.tokens, d.dim, d.heads, d.head_dim());
    let q3 = 3 * dim;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut d_qkv = vec![0.0; d.rows() * q3];
    d_qkv
        .par_chunks_mut(s * q3)
        .zip(qkv.par_chunks(s * q3))
        .zip(probs.par_chunks(heads * s * s))
        .zip(d_out.par_chunks(s * dim))
        .for_each(|(((dq, x), pr), dout)| {
            let mut dp = vec![0.0; s * s];
            for h in 0..heads {
                let p = &pr[h * s * s..(h + 1) * s * s];
                let d_o = MatRef::rows(&dout[h * dh..], dim);
                // dP = dO·Vᵀ, dV = Pᵀ·dO
                let vt = MatRef::transposed(&x[2 * dim + h * dh..], q3);
                matmul(&mut dp, s, s, s, dh, d_o, vt, 1.0, false, Threads::One);
                matmul(
                    &mut dq[2 * dim + h * dh..],
                    q3,
                    s,
                    dh,
                    s,
                    MatRef::transposed(p, s),
                    d_o,
                    1.0,
                    false,
                    Threads::One,
                );
                // through the softmax: dS = P ⊙ (dP − Σ_t dP·P)
                for (dr, pr) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                    let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(g, &pv)| *g = pv * (*g - dot));
                }
                // dQ = scale·dS·K, dK = scale·dSᵀ·Q
                let k = MatRef::rows(&x[dim + h * dh..], q3);
                matmul(
                    &mut dq[h * dh..],
                    q3,
                    s,
                    dh,
                    s,
                    MatRef::rows(&dp, s),
                    k,
                    scale,
                    false,
                    Threads::One,
                );
                let q = MatRef::rows(&x[h * dh..], q3);
                matmul(
                    &mut dq[dim + h * dh..],
                    q3,
                    s,
                    dh,
                    s,
                    MatRef::transposed(&dp, s),
                    q,
                    scale,
                    false,
                    Threads::One,
                );
            }
        });
    d_qkv
}

/// One block forward on `x: [batch·tokens, D]`. Returns the output and, when `keep`, what the
/// backward needs.
pub fn block_forward(
    d: &BlockDims,
    p: &BlockTensors<&[f32]>,
    x: &[f32],
    scales: Option<Scales<'_>>,
    keep: bool,
) -> (Vec<f32>, Option<BlockSaved>) {
    let (rows, dim) = (d.rows(), d.dim);
    let row_len = d.tokens * dim;
    let (xhat1, rstd1, h1) = layer_norm(x, p.norm1_weight, p.norm1_bias);
    let qkv = linear(&h1, rows, dim, p.qkv_weight, p.qkv_bias);
    let (attn_out, probs) = attention(d, &qkv);
    let a = linear(&attn_out, rows, dim, p.proj_weight, p.proj_bias);
    let mut y = x.to_vec();
    add_branch(&mut y, &a, scales.map(|s| s.attn), row_len);
    drop(a);
    let (xhat2, rstd2, h2) = layer_norm(&y, p.norm2_weight, p.norm2_bias);
    let u = linear(&h2, rows, dim, p.fc1_weight, p.fc1_bias);
    let mut g = vec![0.0; u.len()];
    g.par_chunks_mut(ELEMS_PER_TASK)
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .for_each(|(g, u)| g.iter_mut().zip(u).for_each(|(g, &u)| *g = gelu_value(u)));
    let m = linear(&g, rows, d.hidden, p.fc2_weight, p.fc2_bias);
    add_branch(&mut y, &m, scales.map(|s| s.mlp), row_len);
    let saved = keep.then_some(BlockSaved {
        xhat1,
        rstd1,
        h1,
        qkv,
        probs,
        attn_out,
        xhat2,
        rstd2,
        h2,
        u,
        g,
    });
    (y, saved)
}

/// One block backward: from `dy` (the output's gradient) to `dx` (returned); every parameter's
/// gradient is added into `grads` (each as long as its parameter), where the tape keeps them, so
/// no parameter-sized buffer is allocated per step.
pub fn block_backward(
    d: &BlockDims,
    p: &BlockTensors<&[f32]>,
    saved: &BlockSaved,
    scales: Option<Scales<'_>>,
    dy: &[f32],
    grads: &mut BlockTensors<&mut [f32]>,
) -> Vec<f32> {
    let (rows, dim) = (d.rows(), d.dim);
    let row_len = d.tokens * dim;

    // the MLP branch
    let dm = scale_rows(dy, scales.map(|s| s.mlp), row_len);
    let mut du = linear_backward(
        &dm,
        &saved.g,
        rows,
        d.hidden,
        p.fc2_weight,
        grads.fc2_weight,
        grads.fc2_bias,
    );
    drop(dm);
    du.par_chunks_mut(ELEMS_PER_TASK)
        .zip(saved.u.par_chunks(ELEMS_PER_TASK))
        .for_each(|(g, u)| {
            g.iter_mut()
                .zip(u)
                .for_each(|(g, &u)| *g *= gelu_derivative(u))
        });
    let dh2 = linear_backward(
        &du,
        &saved.h2,
        rows,
        dim,
        p.fc1_weight,
        grads.fc1_weight,
        grads.fc1_bias,
    );
    drop(du);
    let mut dx1 = dy.to_vec();
    layer_norm_backward(
        &dh2,
        &saved.xhat2,
        &saved.rstd2,
        p.norm2_weight,
        &mut dx1,
        grads.norm2_weight,
        grads.norm2_bias,
    );
    drop(dh2);

    // the attention branch
    let da = scale_rows(&dx1, scales.map(|s| s.attn), row_len);
    let d_attn_out = linear_backward(
        &da,
        &saved.attn_out,
        rows,
        dim,
        p.proj_weight,
        grads.proj_weight,
        grads.proj_bias,
    );
    drop(da);
    let d_qkv = attention_backward(d, &saved.qkv, &saved.probs, &d_attn_out);
    drop(d_attn_out);
    let dh1 = linear_backward(
        &d_qkv,
        &saved.h1,
        rows,
        dim,
        p.qkv_weight,
        grads.qkv_weight,
        grads.qkv_bias,
    );
    drop(d_qkv);
    let mut dx = dx1;
    layer_norm_backward(
        &dh1,
        &saved.xhat1,
        &saved.rstd1,
        p.norm1_weight,
        &mut dx,
        grads.norm1_weight,
        grads.norm1_bias,
    );
    dx
}
