//! The element types a model computes in: `f32`, and [`AmpF16`] for mixed precision.
//!
//! PyTorch counterpart: the `float32` default and `torch.cuda.amp.autocast()`'s `float16`.

use std::borrow::Cow;

use dfdx::prelude::*;

/// Half precision, as dfdx's automatic mixed precision stores it: `f16` values, with reductions,
/// matmuls (f32 accumulation) and transcendental functions computed in f32.
pub type AmpF16 = dfdx::dtypes::AMP<half::f16>;

/// An element type the model computes in: `f32`, or [`AmpF16`] for mixed precision.
pub trait MaeDtype: Dtype + Send + Sync + 'static {
    /// The nearest value of this type (saturating to ±infinity past the type's range).
    fn of_f64(value: f64) -> Self;
    /// The value as an `f32` (exact for both types).
    fn to_f32(self) -> f32;
    /// Host `f32` values in this type: borrowed for `f32`, converted otherwise.
    fn from_f32_slice(values: &[f32]) -> Cow<'_, [Self]>;
    /// Host values of this type as `f32`: moved for `f32`, converted otherwise.
    fn into_f32_vec(values: Vec<Self>) -> Vec<f32>;
}

impl MaeDtype for f32 {
    fn of_f64(value: f64) -> Self {
        value as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32_slice(values: &[f32]) -> Cow<'_, [Self]> {
        Cow::Borrowed(values)
    }
    fn into_f32_vec(values: Vec<Self>) -> Vec<f32> {
        values
    }
}

impl MaeDtype for AmpF16 {
    fn of_f64(value: f64) -> Self {
        dfdx::dtypes::AMP(half::f16::from_f64(value))
    }
    fn to_f32(self) -> f32 {
        self.0.to_f32()
    }
    fn from_f32_slice(values: &[f32]) -> Cow<'_, [Self]> {
        Cow::Owned(
            values
                .iter()
                .map(|&v| dfdx::dtypes::AMP(half::f16::from_f32(v)))
                .collect(),
        )
    }
    fn into_f32_vec(values: Vec<Self>) -> Vec<f32> {
        values.into_iter().map(|v| v.0.to_f32()).collect()
    }
}
