//! The devices MAE runs on: dfdx's `Cpu` (with our fused kernels, [`crate::kernels`]) and, in a
//! `cuda` build, `Cuda`, each in `f32` and in mixed precision.
//!
//! [`MaeDevice`] is dfdx's `Device<f32>` plus the ops our layers ask of a device (defined beside
//! the layers, [`crate::layers::MaeDevice`]). Today that is exact (erf) GELU (published dfdx
//! 0.13's `accurate_gelu` has a gradient wrong by up to a factor sqrt(2), fixed in our vendored
//! copy, `vendor/dfdx/PATCHES.md`; ours stays, faster and fused; the math is in [`crate::gelu`]),
//! the transformer block, which the CPU runs as one fused kernel, and a tensor's storage borrowed
//! in place where it lies in host memory (the patched dfdx's storage access). PyTorch counterpart: `nn.GELU()` (approximate='none').
//!
//! [`MaeDtype`] names the element types a model computes in: `f32`, and [`AmpF16`] (dfdx's
//! `AMP<f16>`: values stored in half precision, arithmetic in f32), the forward/backward dtype of
//! `--precision amp-f16` (PyTorch counterpart: `torch.cuda.amp.autocast()`).

use dfdx::prelude::*;

pub use crate::dtype::{AmpF16, MaeDtype};
pub use crate::layers::MaeDevice;

/// Mixed precision on the CPU: dfdx's ops in `AMP<f16>` (slow; for checking the path here).
impl MaeDevice<AmpF16> for Cpu {
    fn host_slice_mut(buffer: &mut <Self as Storage<AmpF16>>::Vec) -> Option<&mut [AmpF16]> {
        Some(&mut buffer[..])
    }

    fn keeps_host_memory() -> bool {
        true
    }

    fn tensor_host_slice<S: Shape, T>(t: &Tensor<S, AmpF16, Self, T>) -> Option<&[AmpF16]> {
        crate::layers::cpu_slice(t)
    }

    fn tensor_host_slice_mut<S: Shape, T>(
        t: &mut Tensor<S, AmpF16, Self, T>,
    ) -> Option<&mut [AmpF16]> {
        crate::layers::cpu_slice_mut(t)
    }
}

#[cfg(feature = "cuda")]
impl MaeDevice for Cuda {}

#[cfg(feature = "cuda")]
impl MaeDevice<AmpF16> for Cuda {}
