//! Data parallelism: ranks, the bucketed gradient all-reduce, and the cross-rank weight check.
//!
//! PyTorch counterpart: `util/misc.py::init_distributed_mode` (rank and world size from the
//! launcher), `DistributedDataParallel` (gradients averaged by an all-reduce over ~25 MB buckets
//! once per optimizer step, so every rank applies the same update) and `misc.all_reduce_mean` for
//! the logged loss. The data half, `DistributedSampler`, is `mae_data::loader::LoaderConfig`'s
//! `rank`/`world_size`.
//!
//! Ranks come from MPI when the `mpi` feature is on and the process was started by `mpirun`,
//! `mpiexec` or Slurm's `srun` (their environment variables say so); otherwise the run is one
//! process ([`Comm::single`]) and no MPI library is touched. A build without the feature that
//! finds itself launched as one of several ranks refuses to start rather than run N copies of the
//! same job into one output folder.

use std::time::{Duration, Instant};

use mae_core::device::MaeDevice;
use mae_core::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
};
use mae_core::dfdx::prelude::*;

use crate::error::{device_err, TrainError};

mod comm;
#[cfg(feature = "nccl")]
mod nccl;

pub use comm::{launcher_world_size, local_rank, Comm};

/// DDP's default bucket: 25 MiB of f32 gradients per all-reduce call.
pub const BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// DDP's bucket rule for gradients of `lens` values, in order: fill a bucket of up to `cap` values,
/// start the next when the next gradient would overflow it; a gradient larger than `cap` gets a
/// bucket of its own. Returns the bucket sizes and each gradient's (bucket, offset).
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn bucket_layout(lens: &[usize], cap: usize) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut sizes: Vec<usize> = Vec::new();
    let mut slots = Vec::with_capacity(lens.len());
    for &n in lens {
        let bucket = sizes.len();
        match sizes.last_mut() {
            Some(size) if *size + n <= cap => {
                slots.push((bucket - 1, *size));
                *size += n;
            }
            _ => {
                slots.push((bucket, 0));
                sizes.push(n);
            }
        }
    }
    (sizes, slots)
}

/// Reused buffers of the gradient all-reduce, and how long it took.
#[derive(Debug, Default)]
pub struct GradSync {
    flat: Vec<f32>,
    reduced: Vec<f32>,
    /// Time spent in the all-reduce calls (not the copies) since creation.
    pub reduce_time: Duration,
    /// Time spent copying gradients into and out of the buckets.
    pub copy_time: Duration,
    /// All-reduce calls made.
    pub calls: u64,
    /// Values summed per step (every gradient, plus the scalars).
    pub values: usize,
    /// The GPU path: NCCL over the gradients where they lie.
    #[cfg(feature = "nccl")]
    nccl: Option<self::nccl::NcclSync>,
}

/// Scalars that ride along with the gradients in the last bucket (one all-reduce per step).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepScalars {
    /// This rank's loss of the step (the sum over ranks comes back).
    pub loss: f64,
    /// 1 where this rank was asked to stop (SIGINT/SIGTERM), else 0.
    pub stop: f64,
    /// 1 where this rank's loss-scaled gradients overflowed (mixed precision), else 0: any
    /// rank's overflow makes every rank skip the step.
    pub overflow: f64,
}

impl GradSync {
    /// Averages every trainable parameter's gradient of `model` over the ranks (`Σ / world`),
    /// with `extra` host gradients (a head kept outside the module walk) after them, in buckets
    /// of [`BUCKET_ELEMS`]; `scalars` are summed over the ranks in the same calls. With one rank
    /// it returns at once. Gradients in host memory (`Cpu`) go through MPI; on `Cuda` (a build
    /// with the `nccl` feature) the buckets stay on the GPU and go through NCCL, and the extras
    /// and scalars through MPI.
    pub fn all_reduce<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        comm: &Comm,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        extra: &mut [&mut [f32]],
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        let world = comm.world_size();
        if world == 1 {
            return Ok(scalars);
        }
        if !D::keeps_host_memory() {
            return self.all_reduce_on_device(comm, model, grads, extra, scalars);
        }
        let t0 = Instant::now();
        self.flat.clear();
        for_each_grad(model, grads, |_, g| self.flat.extend_from_slice(g))?;
        push_tail(&mut self.flat, extra, scalars);
        self.reduced.resize(self.flat.len(), 0.0);
        self.values = self.flat.len();
        let t1 = Instant::now();
        for (send, recv) in self
            .flat
            .chunks(BUCKET_ELEMS)
            .zip(self.reduced.chunks_mut(BUCKET_ELEMS))
        {
            comm.all_reduce_sum(send, recv)?;
            self.calls += 1;
        }
        let t2 = Instant::now();
        let scale = 1.0 / world as f32;
        let mut at = 0;
        let reduced = &self.reduced;
        for_each_grad(model, grads, |_, g| {
            scale_into(g, &reduced[at..], scale);
            at += g.len();
        })?;
        let out = read_tail(&reduced[at..], extra, scale);
        self.reduce_time += t2 - t1;
        self.copy_time += (t1 - t0) + t2.elapsed();
        Ok(out)
    }

    /// [`GradSync::all_reduce`] of gradients that lie on a GPU (NCCL, in a build with `nccl`).
    fn all_reduce_on_device<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        comm: &Comm,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        extra: &mut [&mut [f32]],
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        #[cfg(feature = "nccl")]
        {
            let t0 = Instant::now();
            let nccl = match &mut self.nccl {
                Some(n) => n,
                empty => empty.insert(self::nccl::NcclSync::new(comm, model, grads)?),
            };
            let calls = nccl.average(model, grads)?;
            self.calls += calls;
            self.values = nccl.values();
            self.reduce_time += t0.elapsed();
            self.reduce_host(comm, extra, scalars)
        }
        #[cfg(not(feature = "nccl"))]
        {
            let _ = (comm, model, grads, extra, scalars);
            Err(nccl_missing())
        }
    }

    /// The host part of a GPU step's all-reduce: `extra` averaged, `scalars` summed, one call.
    #[cfg(feature = "nccl")]
    fn reduce_host(
        &mut self,
        comm: &Comm,
        extra: &mut [&mut [f32]],
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        self.flat.clear();
        push_tail(&mut self.flat, extra, scalars);
        self.reduced.resize(self.flat.len(), 0.0);
        comm.all_reduce_sum(&self.flat, &mut self.reduced)?;
        self.calls += 1;
        Ok(read_tail(
            &self.reduced,
            extra,
            1.0 / comm.world_size() as f32,
        ))
    }
}

/// Appends the extra gradients and the step's scalars to an all-reduce buffer.
fn push_tail(flat: &mut Vec<f32>, extra: &[&mut [f32]], scalars: StepScalars) {
    for g in extra {
        flat.extend_from_slice(g);
    }
    flat.push(scalars.loss as f32);
    flat.push(scalars.stop as f32);
    flat.push(scalars.overflow as f32);
}

/// `dst ← scale · src` over `dst`'s length.
fn scale_into(dst: &mut [f32], src: &[f32], scale: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s * scale;
    }
}

/// Reads back what [`push_tail`] appended, once summed over the ranks: the extras averaged
/// (`× scale`) into place, the scalars' sums returned.
fn read_tail(reduced: &[f32], extra: &mut [&mut [f32]], scale: f32) -> StepScalars {
    let mut at = 0;
    for g in extra.iter_mut() {
        scale_into(g, &reduced[at..], scale);
        at += g.len();
    }
    StepScalars {
        loss: reduced[at] as f64,
        stop: reduced[at + 1] as f64,
        overflow: reduced[at + 2] as f64,
    }
}

/// Calls `f(name, gradient)` for every trainable parameter of `model`, in the module walk's order
/// (the same on every rank), with its gradient in place. Errors on devices whose gradients are
/// not in host memory.
pub fn for_each_grad<M: TensorCollection<f32, D>, D: MaeDevice>(
    model: &mut M,
    grads: &mut Gradients<f32, D>,
    mut f: impl FnMut(&str, &mut [f32]),
) -> Result<(), TrainError> {
    for_each_grad_buffer(model, grads, |name, grad| match D::host_slice_mut(grad) {
        Some(g) => {
            f(name, g);
            Ok(())
        }
        None => Err(TrainError::Dist(format!(
            "`{name}`: the MPI gradient all-reduce needs gradients in host memory (the cpu device)"
        ))),
    })
}

/// [`GradSync::all_reduce`] of a model made of `module` and a linear `head` outside its walk
/// (the classifier; the probe, whose `module` is `()`): the head's two gradients ride along as
/// extras. One rank returns at once.
pub fn all_reduce_with_head<M: TensorCollection<f32, D>, P: mae_core::MaePreset, D: MaeDevice>(
    sync: &mut GradSync,
    comm: &Comm,
    module: &mut M,
    head: &mae_core::Head<P, D>,
    grads: &mut Gradients<f32, D>,
    scalars: StepScalars,
) -> Result<StepScalars, TrainError> {
    if comm.world_size() == 1 {
        return Ok(scalars);
    }
    grads.try_alloc_for(&head.weight).map_err(device_err)?;
    grads.try_alloc_for(&head.bias).map_err(device_err)?;
    let mut head_w = grads.get(&head.weight).as_vec();
    let mut head_b = grads.get(&head.bias).as_vec();
    let extras: &mut [&mut [f32]] = &mut [&mut head_w[..], &mut head_b[..]];
    let reduced = sync.all_reduce(comm, module, grads, extras, scalars)?;
    set_grad(grads, &head.weight, &head_w)?;
    set_grad(grads, &head.bias, &head_b)?;
    Ok(reduced)
}

/// Overwrites the gradient of `t` with `values` (host memory or, with the `nccl` feature, a GPU).
pub(crate) fn set_grad<S: Shape, D: MaeDevice>(
    grads: &mut Gradients<f32, D>,
    t: &Tensor<S, f32, D>,
    values: &[f32],
) -> Result<(), TrainError> {
    let grad = grads.get_or_alloc_mut(t).map_err(device_err)?;
    if let Some(g) = D::host_slice_mut(grad) {
        if g.len() != values.len() {
            return Err(TrainError::Dist(format!(
                "{} gradient values for a tensor of {}",
                values.len(),
                g.len()
            )));
        }
        g.copy_from_slice(values);
        return Ok(());
    }
    #[cfg(feature = "nccl")]
    return self::nccl::set_cuda_grad(grads, t, values);
    #[cfg(not(feature = "nccl"))]
    Err(nccl_missing())
}

/// The error of a build without the `nccl` feature whose ranks hold their gradients on GPUs.
#[cfg(not(feature = "nccl"))]
fn nccl_missing() -> TrainError {
    TrainError::Dist(
        "several ranks on GPUs average their gradients with NCCL: build with `--features nccl` \
         (needs a CUDA toolkit with NCCL, and MPI)"
            .into(),
    )
}

/// Calls `f(name, buffer)` with the gradient buffer of every trainable parameter of `model`, in
/// the module walk's order, whatever the device keeps it in.
pub(crate) fn for_each_grad_buffer<M: TensorCollection<f32, D>, D: MaeDevice>(
    model: &mut M,
    grads: &mut Gradients<f32, D>,
    f: impl FnMut(&str, &mut <D as Storage<f32>>::Vec) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let mut visitor = GradVisitor { grads, f };
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut visitor,
    })?;
    Ok(())
}

struct GradVisitor<'a, D: Storage<f32>, F> {
    grads: &'a mut Gradients<f32, D>,
    f: F,
}

impl<D: MaeDevice, F: FnMut(&str, &mut <D as Storage<f32>>::Vec) -> Result<(), TrainError>>
    TensorVisitor<f32, D> for GradVisitor<'_, D, F>
{
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = TrainError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (param, name): (&mut Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let grad = self.grads.get_or_alloc_mut(param).map_err(device_err)?;
        (self.f)(&name, grad)?;
        Ok(None)
    }
}

/// XXH3-64 of every trainable parameter's values of `model` (the host copies of its official
/// tensors, in their order): equal on every rank while the ranks stay in step.
pub fn weights_checksum<M: crate::checkpoint::Checkpointable>(
    model: &M,
) -> Result<u64, TrainError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for t in model.tensors()?.iter().filter(|t| t.trainable) {
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    Ok(hasher.digest())
}

/// Compares the weights' checksum across ranks (the `--check-sync-every` debug check): an error
/// naming the ranks that differ from rank 0.
pub fn check_in_sync<M: crate::checkpoint::Checkpointable>(
    comm: &Comm,
    model: &M,
    step: u64,
) -> Result<(), TrainError> {
    let sum = weights_checksum(model)?;
    let all = comm.all_gather_u64(sum);
    let differ: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Dist(format!(
            "after step {step} the weights of rank(s) {differ:?} differ from rank 0's \
             (checksums {all:016x?})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_in_order_and_a_large_gradient_gets_its_own() {
        let (sizes, slots) = bucket_layout(&[3, 4, 2, 9, 1, 1], 8);
        assert_eq!(sizes, vec![7, 2, 9, 2]);
        assert_eq!(slots, vec![(0, 0), (0, 3), (1, 0), (2, 0), (3, 0), (3, 1)]);
        // every value has one place, and the buckets hold exactly the gradients
        let total: usize = sizes.iter().sum();
        assert_eq!(total, 20);
        assert_eq!(bucket_layout(&[], 8), (vec![], vec![]));
    }
}
