//! Host helpers: tensors from host data and back, through the device's allocation cache, and the
//! conversion of device errors.

use dfdx::prelude::*;

use crate::error::MaeError;

/// A device error as a [`MaeError`].
pub(crate) fn dev_err<E: std::fmt::Debug>(e: E) -> MaeError {
    MaeError::device(e)
}

/// A tensor holding a copy of `data`, allocated by the device. With dfdx's allocation cache on
/// (`enable_cache`), a tensor made by `tensor_from_vec` hands its adopted `Vec` to the cache when
/// it is dropped, and nothing of that origin ever takes it back out: the cache grew by every
/// such buffer at every step (the pretraining process reached 24 GB in 190 steps). Allocating
/// through `zeros_like` draws from the cache and returns to it, so memory stays flat.
pub fn host_tensor<S: Shape, E: Unit, D: ZerosTensor<E> + CopySlice<E>>(
    dev: &D,
    data: &[E],
    shape: S,
) -> Result<Tensor<S, E, D>, MaeError> {
    if data.len() != shape.num_elements() {
        return Err(MaeError::InputShape {
            what: "host data",
            expected: format!("{} values", shape.num_elements()),
            got: data.len().to_string(),
        });
    }
    let mut t = dev.try_zeros_like(&shape).map_err(dev_err)?;
    t.copy_from(data);
    Ok(t)
}

/// The values of a tensor as a `Vec`, row-major, by one `memcpy` of its storage (after making it
/// contiguous, which is free when it already is). dfdx's `as_vec` walks an index iterator and
/// pushes element by element: several times slower on the large buffers of a training step.
pub fn host_vec<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> Result<Vec<f32>, MaeError> {
    let mut values = vec![0.0; t.shape().num_elements()];
    host_copy_into(t, &mut values)?;
    Ok(values)
}

/// [`host_vec`] into a buffer the caller owns (`dst.len()` must be the tensor's element count).
pub fn host_copy_into<S: Shape, D: Device<f32>>(
    t: &Tensor<S, f32, D>,
    dst: &mut [f32],
) -> Result<(), MaeError> {
    t.clone().try_contiguous().map_err(dev_err)?.copy_into(dst);
    Ok(())
}
