//! Exact (erf) GELU: the scalar math our CPU kernels use, and dfdx's op for every other device.
//!
//! PyTorch counterpart: `nn.GELU()` (approximate='none'). Published dfdx 0.13's `accurate_gelu`
//! has the right value and a gradient wrong by up to a factor sqrt(2) (`NOTES.md`); the vendored
//! dfdx fixes it, and [`gelu_composed`] is that op.

use dfdx::prelude::*;

use crate::dtype::MaeDtype;
use crate::error::MaeError;
use crate::host::dev_err;

/// `erf(x)` in f32 as a rational polynomial on `[-4, 4]` (the approximation Eigen and XLA use
/// for f32; |error| < 5e-7 against the exact value, checked in the tests), about 4× faster than
/// `libm::erff` and free of branches, so loops over it vectorize.
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_5e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    x * p / q
}

/// `gelu(x) = x·Φ(x) = 0.5·x·(1 + erf(x/√2))`.
#[inline]
pub fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline]
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp()
        * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
    cdf + x * pdf
}

/// GELU through dfdx ops on any device, computed where the tensor lies (no copy to the host):
/// dfdx's `accurate_gelu`, whose gradient the vendored dfdx fixes (published dfdx 0.13's
/// backward is `Φ(x) + x·e^{-x²/2}/√π` where the derivative is `Φ(x) + x·e^{-x²/2}/√(2π)`;
/// `vendor/dfdx/PATCHES.md`, change 2).
pub fn gelu_composed<S: Shape, E: MaeDtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Result<Tensor<S, E, D, T>, MaeError> {
    x.try_accurate_gelu().map_err(dev_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_5e_7_of_the_exact_value() {
        let mut worst = 0.0f64;
        for i in -700_000..=700_000 {
            let x = i as f32 * 1e-5;
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst < 5e-7, "worst error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(-30.0) < -0.999_999 && erf(30.0) > 0.999_999);
    }

    #[test]
    fn values_and_derivative_match_the_formula() {
        // reference values of 0.5·x·(1 + erf(x/√2)) in f64
        let cases = [
            (-3.0f64, -0.0040496),
            (-1.0, -0.15865525),
            (0.0, 0.0),
            (0.5, 0.34573123),
            (2.0, 1.95449974),
        ];
        for (x, y) in cases {
            assert!((gelu_value(x as f32) as f64 - y).abs() < 1e-6, "gelu({x})");
        }
        // derivative against central differences in f64
        for x in [-3.0f32, -1.2, -0.1, 0.0, 0.7, 2.5] {
            let h = 1e-3f64;
            let f = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            let fd = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            assert!((gelu_derivative(x) as f64 - fd).abs() < 1e-5, "gelu'({x})");
        }
    }

    #[test]
    fn fused_and_composed_gelu_agree_in_value_and_gradient() {
        let dev: Cpu = Default::default();
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.37 - 4.0).collect();
        let x: Tensor<(usize, Const<4>), f32, Cpu> =
            dev.tensor_from_vec(data.clone(), (6, Const::<4>));
        let weights: Tensor<(usize, Const<4>), f32, Cpu> =
            dev.tensor_from_vec((0..24).map(|i| (i % 5) as f32 - 2.0).collect(), (6, Const));

        let run = |fused: bool| {
            let y = if fused {
                <Cpu as crate::MaeDevice>::gelu(x.leaky_trace())
            } else {
                gelu_composed(x.leaky_trace())
            }
            .expect("gelu");
            let value = y.as_vec();
            let grads = (y * weights.clone()).sum::<Rank0, _>().backward();
            (value, grads.get(&x).as_vec())
        };
        let (v1, g1) = run(true);
        let (v2, g2) = run(false);
        // the fused kernel's erf is our polynomial, dfdx's `accurate_gelu` calls libm's `erff`
        for (a, b) in v1.iter().zip(&v2) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        for ((a, b), (&xv, w)) in g1.iter().zip(&g2).zip(data.iter().zip(weights.as_vec())) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
            assert!((a - gelu_derivative(xv) * w).abs() <= 1e-6 * a.abs().max(1.0));
        }
    }
}
