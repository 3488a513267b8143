//! The GPU half of the gradient all-reduce: NCCL over the ranks' CUDA gradient buffers, bucketed.
//!
//! PyTorch counterpart: `DistributedDataParallel` with the `nccl` backend (`init_process_group`
//! with the unique id exchanged through the launcher; gradients copied into ~25 MB buckets, one
//! `ncclAllReduce` per bucket, averaged). Here NCCL's unique id is drawn on rank 0 and broadcast
//! over MPI, each rank's gradients are packed in the module walk's order into device buckets of
//! [`BUCKET_ELEMS`], reduced with `ncclAvg` into a second set of buckets on the device's own
//! stream (so after every kernel of the backward), and copied back. Nothing leaves the GPU.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaSlice, DeviceSlice};
use cudarc::nccl::safe::{Comm as NcclComm, Id, ReduceOp};
use mae_core::device::MaeDevice;
use mae_core::dfdx::nn::tensor_collection::TensorCollection;
use mae_core::dfdx::prelude::*;

use crate::dist::{bucket_layout, for_each_grad_buffer, Comm, BUCKET_ELEMS};
use crate::error::{device_err, TrainError};

/// A NCCL communicator over the ranks, and the device buckets of one model's gradients.
pub(crate) struct NcclSync {
    comm: NcclComm,
    dev: Arc<CudaDevice>,
    /// Length of each gradient, in the module walk's order (the layout below is for these).
    lens: Vec<usize>,
    /// (bucket, offset) of each gradient.
    slots: Vec<(usize, usize)>,
    send: Vec<CudaSlice<f32>>,
    recv: Vec<CudaSlice<f32>>,
}

impl fmt::Debug for NcclSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NcclSync(rank {} of {}, {} gradients in {} buckets)",
            self.comm.rank(),
            self.comm.world_size(),
            self.lens.len(),
            self.send.len()
        )
    }
}

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> TrainError + '_ {
    move |e| TrainError::Dist(format!("NCCL {what}: error {:?}", e.0))
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> TrainError + '_ {
    move |e| TrainError::Dist(format!("{what}: CUDA driver error {:?}", e.0))
}

impl NcclSync {
    /// Joins the ranks of `mpi` into a NCCL communicator on the GPU that holds `grads`, with
    /// buckets laid out for `model`'s gradients.
    pub(crate) fn new<M: TensorCollection<f32, D>, D: MaeDevice>(
        mpi: &Comm,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
    ) -> Result<Self, TrainError> {
        let mut dev = None;
        for_each_cuda_grad(model, grads, |_, g| {
            dev.get_or_insert_with(|| g.device());
            Ok(())
        })?;
        let dev = dev.ok_or_else(|| TrainError::Dist("no gradient to all-reduce".into()))?;
        // rank 0 draws the unique id, MPI hands it to the others
        let mut bytes = [0u8; 128];
        if mpi.is_main() {
            let id = Id::new().map_err(nccl_err("unique id"))?;
            for (b, &c) in bytes.iter_mut().zip(id.internal().iter()) {
                *b = c as u8;
            }
        }
        mpi.broadcast_bytes(&mut bytes);
        let id = Id::uninit(bytes.map(|b| b as std::ffi::c_char));
        let comm = NcclComm::from_rank(dev.clone(), mpi.rank(), mpi.world_size(), id)
            .map_err(nccl_err("communicator"))?;
        Ok(NcclSync {
            comm,
            dev,
            lens: Vec::new(),
            slots: Vec::new(),
            send: Vec::new(),
            recv: Vec::new(),
        })
    }

    /// Values averaged per step.
    pub(crate) fn values(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Lays the buckets out for gradients of `lens` (DDP's rule: fill a bucket in order, start
    /// the next when the next gradient would overflow it; a larger gradient gets one of its own).
    fn plan(&mut self, lens: Vec<usize>) -> Result<(), TrainError> {
        let (sizes, slots) = bucket_layout(&lens, BUCKET_ELEMS);
        self.slots = slots;
        let alloc = |n: usize| {
            self.dev
                .alloc_zeros::<f32>(n)
                .map_err(driver_err("a gradient bucket"))
        };
        self.send = sizes.iter().map(|&n| alloc(n)).collect::<Result<_, _>>()?;
        self.recv = sizes.iter().map(|&n| alloc(n)).collect::<Result<_, _>>()?;
        self.lens = lens;
        Ok(())
    }

    /// Averages every trainable gradient of `model` over the ranks, in place; returns the
    /// number of NCCL calls.
    pub(crate) fn average<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
    ) -> Result<u64, TrainError> {
        let mut lens = Vec::with_capacity(self.lens.len());
        for_each_cuda_grad(model, grads, |_, g| {
            lens.push(g.len());
            Ok(())
        })?;
        if lens != self.lens {
            self.plan(lens)?;
        }
        let (dev, slots, lens) = (&self.dev, &self.slots, &self.lens);
        let send = &mut self.send;
        let mut i = 0;
        for_each_cuda_grad(model, grads, |_, g| {
            let ((bucket, at), n) = (slots[i], lens[i]);
            i += 1;
            dev.dtod_copy(&*g, &mut send[bucket].slice_mut(at..at + n))
                .map_err(driver_err("packing a gradient bucket"))
        })?;
        for (s, r) in self.send.iter().zip(self.recv.iter_mut()) {
            self.comm
                .all_reduce(s, r, &ReduceOp::Avg)
                .map_err(nccl_err("all-reduce"))?;
        }
        let recv = &self.recv;
        let mut i = 0;
        for_each_cuda_grad(model, grads, |_, g| {
            let ((bucket, at), n) = (slots[i], lens[i]);
            i += 1;
            dev.dtod_copy(&recv[bucket].slice(at..at + n), g)
                .map_err(driver_err("unpacking a gradient bucket"))
        })?;
        Ok(self.send.len() as u64)
    }
}

/// Writes `values` into the gradient of `t`, which lies on a GPU.
pub(crate) fn set_cuda_grad<S: Shape, D: MaeDevice>(
    grads: &mut Gradients<f32, D>,
    t: &Tensor<S, f32, D>,
    values: &[f32],
) -> Result<(), TrainError> {
    let g = cuda_slice::<D>(grads.get_or_alloc_mut(t).map_err(device_err)?)?;
    g.device()
        .htod_sync_copy_into(values, g)
        .map_err(driver_err("writing a gradient"))
}

/// A gradient buffer of device `D` as the `CudaSlice` it is when `D` is `Cuda`; an error on
/// another device. (dfdx's buffer type is not nameable, its projection is.)
fn cuda_slice<D: MaeDevice>(
    buffer: &mut <D as Storage<f32>>::Vec,
) -> Result<&mut CudaSlice<f32>, TrainError> {
    (buffer as &mut dyn Any)
        .downcast_mut::<<Cuda as Storage<f32>>::Vec>()
        .map(|b| &mut **b)
        .ok_or_else(|| TrainError::Dist("NCCL needs the model on the cuda device".into()))
}

/// Calls `f(name, gradient)` with the device buffer of every trainable gradient of `model`, in
/// the module walk's order.
fn for_each_cuda_grad<M: TensorCollection<f32, D>, D: MaeDevice>(
    model: &mut M,
    grads: &mut Gradients<f32, D>,
    mut f: impl FnMut(&str, &mut CudaSlice<f32>) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    for_each_grad_buffer(model, grads, |name, buffer| {
        f(name, cuda_slice::<D>(buffer)?)
    })
}
