//! The devices MAE runs on: dfdx's `Cpu` (with our fused kernels, [`crate::kernels`]) and, in a
//! `cuda` build, `Cuda`, each in `f32` and in mixed precision.
//!
//! [`MaeDevice`] is dfdx's `Device<f32>` plus the ops our layers ask of a device (defined beside
//! the layers, [`crate::layers::MaeDevice`]). Today that is exact (erf) GELU: dfdx 0.13's
//! `accurate_gelu` computes the right forward value but its backward multiplies the Gaussian term
//! by `2/sqrt(pi)` instead of `sqrt(2/pi)`, a gradient wrong by up to a factor sqrt(2) (see
//! `NOTES.md`; the math is in [`crate::gelu`]), and the transformer block, which the CPU runs as
//! one fused kernel. PyTorch counterpart: `nn.GELU()` (approximate='none').
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
}

#[cfg(feature = "cuda")]
impl MaeDevice for Cuda {}

#[cfg(feature = "cuda")]
impl MaeDevice<AmpF16> for Cuda {}
