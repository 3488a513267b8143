//! A bounds-checked front to the `gemm` crate (0.19, runtime dispatch up to AVX-512): the one
//! place in mae-core with `unsafe`.
//!
//! PyTorch counterpart: the BLAS `sgemm` behind `torch.matmul` / `F.linear` on CPU.
//!
//! A matrix is a slice with a row stride and a column stride (both ≥ 0, in elements), so a
//! transposed operand is the same slice with its strides swapped. Every index the product can
//! touch is checked against the slice length before the call.

/// A read-only strided matrix view.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [f32], row_stride: usize) -> Self {
        MatRef {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows are `row_stride` apart.
    pub fn transposed(data: &'a [f32], row_stride: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: row_stride,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// How many threads a product may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (for small products run inside a parallel loop).
    One,
    /// Rayon's pool.
    All,
}

/// `dst = (accumulate ? dst : 0) + scale · a · b` with `a: [m, k]`, `b: [k, n]` and `dst` an
/// `[m, n]` matrix whose rows are `dst_row_stride` apart (columns contiguous).
///
/// # Panics
/// If a view is too short for its shape (a bug in the caller, never user data).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.fits(m, k) && b.fits(k, n) && (m - 1) * dst_row_stride + n <= dst.len(),
        "matmul operand too short for [{m}, {k}] x [{k}, {n}]"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_row_stride..r * dst_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: every element the product reads or writes lies inside the slices (checked above:
    // the largest index of each operand is below its length, strides are non-negative), `dst`
    // is borrowed mutably so it aliases neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &MatRef<'_>, b: &MatRef<'_>) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride]
                            * b.data[p * b.row_stride + j * b.col_stride]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_products_match_the_definition() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let (a, b) = (MatRef::rows(&a, k), MatRef::transposed(&bt, k));
        let expected = naive(m, n, k, &a, &b);
        for threads in [Threads::One, Threads::All] {
            let mut dst = vec![1.0; m * n];
            matmul(&mut dst, n, m, n, k, a, b, 1.0, false, threads);
            assert_eq!(dst, expected);
            matmul(&mut dst, n, m, n, k, a, b, 0.5, true, threads);
            for (d, e) in dst.iter().zip(&expected) {
                assert_eq!(*d, 1.5 * e);
            }
        }
        // a destination with a row stride larger than its width
        let mut wide = vec![0.0; m * (n + 3)];
        matmul(&mut wide, n + 3, m, n, k, a, b, 1.0, false, Threads::One);
        assert_eq!(wide[(n + 3) + 2], expected[n + 2]);
        assert_eq!(wide[n], 0.0);
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn a_short_operand_is_caught_before_the_call() {
        let a = vec![0.0; 10];
        let mut dst = vec![0.0; 4];
        matmul(
            &mut dst,
            2,
            2,
            2,
            6,
            MatRef::rows(&a, 6),
            MatRef::rows(&a, 2),
            1.0,
            false,
            Threads::One,
        );
    }
}
