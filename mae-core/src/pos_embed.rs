//! Fixed 2-D sin-cos position embeddings.
//!
//! PyTorch counterpart: `get_2d_sincos_pos_embed` in `util/pos_embed.py`. Computed in f64 (as
//! numpy does there) and rounded once to f32.

/// The `[1 + grid·grid, dim]` embedding table, row-major, with a leading all-zero row for the
/// cls token. Token `1 + i·grid + j` (row `i`, column `j`) encodes `j` in the first `dim/2` values
/// and `i` in the second half; each half is `[sin(pos·ω), cos(pos·ω)]` with
/// `ω_k = 1 / 10000^(k / (dim/4))`.
///
/// `dim` must be a multiple of 4.
pub fn pos_embed_2d_sincos(dim: usize, grid: usize) -> Vec<f32> {
    assert!(
        dim % 4 == 0,
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

#[cfg(test)]
mod tests {
    use super::*;

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
