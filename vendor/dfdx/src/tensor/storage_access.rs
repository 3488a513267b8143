//! mae-rs patch (see `PATCHES.md` at the crate root): a tensor's storage, readable and writable
//! in place from outside the crate, so that a dependent crate's kernels (CPU, CUDA) read their
//! inputs and write their outputs without a copy out of the tensor and one back in.

use super::{Storage, Tensor};
use crate::shapes::{Shape, Unit};
use crate::tensor::cpu::Cpu;
use std::sync::Arc;

impl<S: Shape, E, D: Storage<E>, T> Tensor<S, E, D, T> {
    /// Whether the storage holds the elements in row-major order with no broadcast axes, so
    /// that storage element `i` is the `i`-th element of the tensor.
    pub fn is_contiguous(&self) -> bool {
        self.strides == self.shape.strides()
    }
}

impl<S: Shape, E: Unit, T> Tensor<S, E, Cpu, T> {
    /// The storage, in storage order ([`Tensor::is_contiguous`] says whether that is row-major).
    pub fn host_data(&self) -> &[E] {
        &self.data.data
    }

    /// The storage, writable: in place when this tensor is its only holder, else after a copy
    /// (copy-on-write, as dfdx's own in-place ops do; clones of a tensor share storage).
    pub fn host_data_mut(&mut self) -> &mut [E] {
        &mut Arc::make_mut(&mut self.data).data
    }
}

#[cfg(feature = "cuda")]
impl<S: Shape, E: Unit, T> Tensor<S, E, crate::tensor::Cuda, T> {
    /// The device buffer, in storage order.
    pub fn cuda_data(&self) -> &cudarc::driver::CudaSlice<E> {
        &self.data.data
    }

    /// The device buffer, writable: in place when this tensor is its only holder, else after a
    /// device-to-device copy (copy-on-write).
    pub fn cuda_data_mut(&mut self) -> &mut cudarc::driver::CudaSlice<E> {
        &mut Arc::make_mut(&mut self.data).data
    }
}
