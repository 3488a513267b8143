//! Fixed 2-D sin-cos position embeddings, and their resampling to another grid.
//!
//! PyTorch counterparts: `get_2d_sincos_pos_embed` in `util/pos_embed.py` (computed in f64, as
//! numpy does there, and rounded once to f32) and `interpolate_pos_embed` in the same file
//! (bicubic `F.interpolate`, `align_corners=False`, on the patch rows; the cls row kept).

/// The `[1 + grid·grid, dim]` embedding table, row-major, with a leading all-zero row for the
/// cls token. Token `1 + i·grid + j` (row `i`, column `j`) encodes `j` in the first `dim/2` values
/// and `i` in the second half; each half is `[sin(pos·ω), cos(pos·ω)]` with
/// `ω_k = 1 / 10000^(k / (dim/4))`.
///
/// `dim` must be a multiple of 4.
pub fn pos_embed_2d_sincos(dim: usize, grid: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "sin-cos position embedding needs dim divisible by 4, got {dim}"
    );
    let half = dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = vec![0f32; (1 + grid * grid) * dim];
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut out[(1 + i * grid + j) * dim..][..dim];
            for (axis, pos) in [(0, j as f64), (1, i as f64)] {
                let part = &mut row[axis * half..][..half];
                for (k, w) in omega.iter().enumerate() {
                    let angle = pos * w;
                    part[k] = angle.sin() as f32;
                    part[quarter + k] = angle.cos() as f32;
                }
            }
        }
    }
    out
}

/// PyTorch's cubic convolution kernel weights (`A = −0.75`) for the fractional offset `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index along one axis: the four source indices (clamped to the border) and
/// their weights, as `upsample_bicubic2d` with `align_corners=False` computes them.
fn bicubic_taps(from: usize, to: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = from as f64 / to as f64;
    (0..to)
        .map(|o| {
            // cubic sources are not clamped at 0 (unlike bilinear)
            let src = scale * (o as f64 + 0.5) - 0.5;
            let base = src.floor();
            let w = cubic_weights(src - base);
            let idx =
                [-1i64, 0, 1, 2].map(|d| (base as i64 + d).clamp(0, from as i64 - 1) as usize);
            (idx, w)
        })
        .collect()
}

/// `interpolate_pos_embed`: resamples a `[1 + old·old, dim]` table (cls row first) to
/// `[1 + new·new, dim]` with bicubic interpolation over the patch grid; the cls row is kept.
/// Returns the table unchanged when the grids match. `table.len()` must be `(1 + old²)·dim`.
pub fn interpolate_pos_embed(table: &[f32], dim: usize, old: usize, new: usize) -> Vec<f32> {
    assert_eq!(table.len(), (1 + old * old) * dim, "pos_embed table size");
    if old == new {
        return table.to_vec();
    }
    let taps = bicubic_taps(old, new);
    let grid = &table[dim..];
    let mut out = Vec::with_capacity((1 + new * new) * dim);
    out.extend_from_slice(&table[..dim]);
    // separable in exact arithmetic; PyTorch sums the 4×4 taps row by row in f32 — done in f64 here
    for (ys, wy) in &taps {
        for (xs, wx) in &taps {
            for c in 0..dim {
                let mut acc = 0f64;
                for (yi, &y) in ys.iter().enumerate() {
                    let mut row = 0f64;
                    for (xi, &x) in xs.iter().enumerate() {
                        row += wx[xi] * grid[(y * old + x) * dim + c] as f64;
                    }
                    acc += wy[yi] * row;
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_keeps_cls_and_is_identity_on_the_same_grid_and_exact_on_constants() {
        let (dim, old) = (4, 3);
        let table: Vec<f32> = (0..(1 + old * old) * dim).map(|i| i as f32 * 0.1).collect();
        assert_eq!(interpolate_pos_embed(&table, dim, old, old), table);
        // a constant field stays constant (the kernel's weights sum to 1)
        let mut constant = vec![2.5f32; (1 + old * old) * dim];
        constant[..dim].copy_from_slice(&[9.0, 8.0, 7.0, 6.0]);
        let up = interpolate_pos_embed(&constant, dim, old, 5);
        assert_eq!(up.len(), 26 * dim);
        assert_eq!(&up[..dim], &[9.0, 8.0, 7.0, 6.0]);
        assert!(up[dim..].iter().all(|v| (v - 2.5).abs() < 1e-6));
    }

    #[test]
    fn layout_matches_the_reference_formula() {
        let (dim, grid) = (8, 3);
        let e = pos_embed_2d_sincos(dim, grid);
        assert_eq!(e.len(), 10 * dim);
        assert!(e[..dim].iter().all(|&v| v == 0.0), "cls row is zero");
        // token (i=2, j=1): w-half encodes 1, h-half encodes 2; omega = [1, 1/100]
        let row = &e[(1 + 2 * grid + 1) * dim..][..dim];
        let expect = [
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
        ];
        for (a, b) in row.iter().zip(expect) {
            assert_eq!(*a, b as f32);
        }
    }
}
