//! Products with a quantized frozen weight `W` `[m, k]` (a [`QuantizedMatrix`]) that never
//! hold `W` in f32: each task dequantizes a tile of at most [`TILE_ROWS`] × [`TILE_COLS`]
//! values (512 KiB, cache-sized; the forward product keeps it transposed beside it) into its
//! own buffer and hands it to `gemm`, accumulating over
//! the tiles of its columns of the result into a buffer of its own; the columns are gathered
//! into the result at the end. Both operands enter `gemm` in their stored orientation (the
//! forward product dequantizes its tiles transposed), the layout `gemm` packs fastest.

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

/// `x Wᵀ` for `x` `[n, k]` row-major: a task per band of rows of `W` (columns of `y`),
/// accumulating `x[:, strip] · tileᵀ` over the column strips of its band.
pub fn linear_values(x: &[f32], n: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let [m, k] = w.dims();
    assert_eq!(x.len(), n * k, "quantized linear: input is not [{n}, {k}]");
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let band = task_size(m, 16, TILE_ROWS);
    let strip = TILE_COLS.min(k);
    let columns: Vec<Vec<f32>> = (0..m.div_ceil(band))
        .into_par_iter()
        .map(|task| {
            let (first, rows) = (task * band, band.min(m - task * band));
            let mut out = vec![0f32; n * rows];
            let (mut tile, mut tile_t) = (vec![0f32; rows * strip], vec![0f32; rows * strip]);
            for start in (0..k).step_by(strip) {
                let width = strip.min(k - start);
                let (tile, tile_t) = (&mut tile[..rows * width], &mut tile_t[..rows * width]);
                w.dequantize_tile(first..first + rows, start..start + width, tile);
                transpose_into(tile, [rows, width], tile_t);
                let a = columns_of(x, k, start, [n, width]);
                let b = Operand::dense(tile_t, [width, rows], Read::AsIs);
                gemm_into(&mut out, rows, start > 0, a, b, 1.0, false);
            }
            out
        })
        .collect();
    gather_columns(&columns, n, m)
}

/// `d_y W` for `d_y` `[n, m]` row-major: a task per band of block columns of `W` (columns of
/// `d_x`), accumulating `d_y[:, rows] · tile` over the row tiles of its band.
pub fn input_grad_values(d_y: &[f32], n: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let [m, k] = w.dims();
    assert_eq!(
        d_y.len(),
        n * m,
        "quantized linear: gradient is not [{n}, {m}]"
    );
    if n == 0 || k == 0 {
        return vec![0.0; n * k];
    }
    let band = task_size(k, w.block_values(), TILE_COLS);
    let columns: Vec<Vec<f32>> = (0..k.div_ceil(band))
        .into_par_iter()
        .map(|task| {
            let (first, width) = (task * band, band.min(k - task * band));
            let mut out = vec![0f32; n * width];
            let mut tile = vec![0f32; TILE_ROWS.min(m) * width];
            for start in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - start);
                let tile = &mut tile[..rows * width];
                w.dequantize_tile(start..start + rows, first..first + width, tile);
                let a = columns_of(d_y, m, start, [n, rows]);
                let b = Operand::dense(tile, [rows, width], Read::AsIs);
                gemm_into(&mut out, width, start > 0, a, b, 1.0, false);
            }
            out
        })
        .collect();
    gather_columns(&columns, n, k)
}

/// Columns `start..start + dims[1]` of the row-major `matrix` (rows of `cols` values), all
/// `dims[0]` rows.
fn columns_of(matrix: &[f32], cols: usize, start: usize, dims: [usize; 2]) -> Operand<'_> {
    Operand {
        values: &matrix[start..],
        dims,
        row_stride: cols,
        col_stride: 1,
    }
}

/// Work items of `unit` (a multiple of it, at most `max`) splitting `len` into about four per
/// core, so that the cores finish together.
fn task_size(len: usize, unit: usize, max: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    let size = len.div_ceil(tasks).div_ceil(unit) * unit;
    size.clamp(unit, max.max(unit))
}

/// `values` (`[rows, cols]`, row-major) transposed into `out`.
fn transpose_into(values: &[f32], [rows, cols]: [usize; 2], out: &mut [f32]) {
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
}

/// The `[n, total]` matrix whose columns are the bands `bands` (each `[n, width]`,
/// row-major) side by side.
fn gather_columns(bands: &[Vec<f32>], n: usize, total: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * total];
    out.par_chunks_mut(total).enumerate().for_each(|(i, row)| {
        let mut at = 0;
        for band in bands {
            let width = band.len() / n;
            row[at..at + width].copy_from_slice(&band[i * width..(i + 1) * width]);
            at += width;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequant::GgmlType;
    use crate::quant::BlockFormat;

    use crate::kernels::bf16_probe::filler as values;

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
}
