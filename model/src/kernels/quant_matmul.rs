//! Products with a quantized frozen weight `W` `[m, k]` (a [`QuantizedMatrix`]) that never
//! hold `W` in f32: each task dequantizes a tile of at most [`TILE_ROWS`] × [`TILE_COLS`]
//! values (512 KiB, cache-sized) into its own buffer and hands it to `gemm`, accumulating over
//! the tiles of its part of the result. Tasks own disjoint rows of the transposed result, so
//! they run on all cores without sharing anything; the result is transposed back at the end.

use rayon::prelude::*;

use super::host_tensor::HostTensor;
use super::matmul::{Operand, Read, gemm_into};
use crate::quant::QuantizedMatrix;

/// Rows of `W` in one dequantized tile, at most.
const TILE_ROWS: usize = 256;
/// Columns of `W` in one dequantized tile, at most (a multiple of every block size).
const TILE_COLS: usize = 512;

/// `x Wᵀ` (`[n, m]`) of a host tensor `x` `[n, k]`.
pub fn linear(x: &HostTensor<2>, w: &QuantizedMatrix) -> HostTensor<2> {
    let n = x.dims()[0];
    let y = linear_values(x.values(), n, w);
    HostTensor::new_like(x, y, [n, w.dims()[0]])
}

/// `d_y W` (`[n, k]`) of a host tensor `d_y` `[n, m]`: the input gradient of [`linear`].
pub fn linear_input_grad(d_y: &HostTensor<2>, w: &QuantizedMatrix) -> HostTensor<2> {
    let n = d_y.dims()[0];
    let d_x = input_grad_values(d_y.values(), n, w);
    HostTensor::new_like(d_y, d_x, [n, w.dims()[1]])
}

/// `x Wᵀ` for `x` `[n, k]` row-major: tasks of whole rows of `W` (rows of `yᵀ`), each
/// accumulating over the column strips of its rows.
pub fn linear_values(x: &[f32], n: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let [m, k] = w.dims();
    assert_eq!(x.len(), n * k, "quantized linear: input is not [{n}, {k}]");
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let rows_per_task = task_size(m, 16, TILE_ROWS);
    let strip = TILE_COLS.min(k);
    let mut y_t = vec![0f32; m * n];
    y_t.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(task, out)| {
            let (first, rows) = (task * rows_per_task, out.len() / n);
            let mut tile = vec![0f32; rows * strip];
            for start in (0..k).step_by(strip) {
                let width = strip.min(k - start);
                let tile = &mut tile[..rows * width];
                w.dequantize_tile(first..first + rows, start..start + width, tile);
                let a = Operand::dense(tile, [rows, width], Read::AsIs);
                let b = columns_transposed(x, k, start, [width, n]);
                gemm_into(out, n, start > 0, a, b, 1.0, false);
            }
        });
    transpose(&y_t, [m, n])
}

/// `d_y W` for `d_y` `[n, m]` row-major: tasks of whole block columns of `W` (rows of
/// `d_xᵀ`), each accumulating over the row tiles of its columns.
pub fn input_grad_values(d_y: &[f32], n: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let [m, k] = w.dims();
    assert_eq!(
        d_y.len(),
        n * m,
        "quantized linear: gradient is not [{n}, {m}]"
    );
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let cols_per_task = task_size(k, w.block_values(), TILE_COLS);
    let mut d_x_t = vec![0f32; k * n];
    d_x_t
        .par_chunks_mut(cols_per_task * n)
        .enumerate()
        .for_each(|(task, out)| {
            let (first, width) = (task * cols_per_task, out.len() / n);
            let mut tile = vec![0f32; TILE_ROWS.min(m) * width];
            for start in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - start);
                let tile = &mut tile[..rows * width];
                w.dequantize_tile(start..start + rows, first..first + width, tile);
                let a = Operand::dense(tile, [rows, width], Read::Transposed);
                let b = columns_transposed(d_y, m, start, [rows, n]);
                gemm_into(out, n, start > 0, a, b, 1.0, false);
            }
        });
    transpose(&d_x_t, [k, n])
}

/// Columns `start..start + width` of the row-major `matrix` (rows of `cols` values), read
/// transposed: `[width, n]`.
fn columns_transposed(matrix: &[f32], cols: usize, start: usize, dims: [usize; 2]) -> Operand<'_> {
    Operand {
        values: &matrix[start..],
        dims,
        row_stride: 1,
        col_stride: cols,
    }
}

/// Work items of `unit` (a multiple of it, at most `max`) splitting `len` into about four per
/// core, so that two cores finish together.
fn task_size(len: usize, unit: usize, max: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    let size = len.div_ceil(tasks).div_ceil(unit) * unit;
    size.clamp(unit, max.max(unit))
}

/// The transpose of the row-major `[rows, cols]` matrix `values`, in blocks of 32 × 32.
fn transpose(values: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    const BLOCK: usize = 32;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let first_col = band * BLOCK;
            let band_cols = out.len() / rows;
            for row_block in (0..rows).step_by(BLOCK) {
                for c in 0..band_cols {
                    let out_row = &mut out[c * rows..(c + 1) * rows];
                    for r in row_block..(row_block + BLOCK).min(rows) {
                        out_row[r] = values[r * cols + first_col + c];
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequant::GgmlType;
    use crate::quant::BlockFormat;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 400.0)
            .collect()
    }

    /// `a` `[n, k]` times `bᵀ` for `b` `[m, k]`, in f64.
    fn reference(a: &[f32], b: &[f32], [n, k, m]: [usize; 3]) -> Vec<f32> {
        let mut out = vec![0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                let dot: f64 = (0..k)
                    .map(|l| a[i * k + l] as f64 * b[j * k + l] as f64)
                    .sum();
                out[i * m + j] = dot as f32;
            }
        }
        out
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 * scale, "{what}: {g} against {w}");
        }
    }

    #[test]
    fn tiled_products_equal_dense_products_of_the_dequantized_weight() {
        let formats = [
            BlockFormat::Ggml(GgmlType::Q8_0),
            BlockFormat::Ggml(GgmlType::Q4K),
            BlockFormat::Ggml(GgmlType::Q5_0),
            BlockFormat::Nf4,
        ];
        // More rows and columns than one tile, and sizes that are not multiples of a task.
        for (format, [m, k]) in
            formats
                .into_iter()
                .zip([[300, 1088], [37, 768], [520, 96], [70, 640]])
        {
            let w = QuantizedMatrix::quantize(format, &values(m * k, 1), [m, k]).unwrap();
            let dense = w.dequantize();
            for n in [1, 5, 33] {
                let x = values(n * k, 2);
                let what = format!("{} [{m}, {k}], n {n}", format.name());
                let y = linear_values(&x, n, &w);
                assert_close(&what, &y, &reference(&x, &dense, [n, k, m]));
                let d_y = values(n * m, 3);
                let mut dense_t = vec![0f32; m * k];
                for (i, v) in dense.iter().enumerate() {
                    dense_t[(i % k) * m + i / k] = *v;
                }
                let d_x = input_grad_values(&d_y, n, &w);
                assert_close(
                    &format!("{what}, input gradient"),
                    &d_x,
                    &reference(&d_y, &dense_t, [n, m, k]),
                );
            }
        }
    }

    #[test]
    fn transposes_of_odd_shapes() {
        let v: Vec<f32> = (0..35 * 70).map(|i| i as f32).collect();
        let t = transpose(&v, [35, 70]);
        assert_eq!(t[69 * 35 + 34], v[34 * 70 + 69]);
        assert_eq!(transpose(&t, [70, 35]), v);
    }
}
