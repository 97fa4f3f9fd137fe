//! Matrix products of host tensors straight through `gemm`, the kernel burn-flex calls itself.
//! Either operand is read transposed through its strides (no copy), a scale and an addition to
//! an existing result ride along in the kernel, and the output buffer is used as allocated:
//! burn-flex zeroes every product's output on one core and then copies it to realign it,
//! which was a tenth of a training step.

use super::cpu::zeros;
use super::host_tensor::HostTensor;

/// How a matrix enters a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// As stored.
    AsIs,
    /// Transposed.
    Transposed,
}

/// Multiply-adds above which a product is split over all cores.
const PARALLEL_WORK: usize = 256 * 1024;

/// A matrix inside a slice: `[rows, cols]`, element `(i, j)` at `i · row_stride + j · col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    /// The slice holding the matrix.
    pub(crate) values: &'a [f32],
    /// Rows and columns.
    pub(crate) dims: [usize; 2],
    /// Distance between rows.
    pub(crate) row_stride: usize,
    /// Distance between columns.
    pub(crate) col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major `[rows, cols]` matrix starting at `values[0]`, read as `read`.
    pub(crate) fn dense(values: &'a [f32], [rows, cols]: [usize; 2], read: Read) -> Self {
        match read {
            Read::AsIs => Self {
                values,
                dims: [rows, cols],
                row_stride: cols,
                col_stride: 1,
            },
            Read::Transposed => Self {
                values,
                dims: [cols, rows],
                row_stride: 1,
                col_stride: cols,
            },
        }
    }

    /// Whether every element lies inside the slice (an offset past `usize::MAX` does not) and
    /// both strides fit the `isize` that `gemm` takes.
    fn in_bounds(&self) -> bool {
        let [rows, cols] = self.dims;
        let last = (rows.saturating_sub(1).checked_mul(self.row_stride))
            .zip(cols.saturating_sub(1).checked_mul(self.col_stride))
            .and_then(|(row, col)| row.checked_add(col));
        let strides_fit =
            isize::try_from(self.row_stride).is_ok() && isize::try_from(self.col_stride).is_ok();
        rows == 0 || cols == 0 || (strides_fit && last.is_some_and(|at| at < self.values.len()))
    }
}

/// Whether an `[m, n]` output with rows `row_stride` apart lies inside `len` values with every
/// element at its own place: rows at least `n` apart never overlap, and the last row ends
/// inside (checked arithmetic, so no offset wraps around).
fn output_fits([m, n]: [usize; 2], row_stride: usize, len: usize) -> bool {
    let end = (m.saturating_sub(1).checked_mul(row_stride)).and_then(|at| at.checked_add(n));
    m == 0
        || n == 0
        || (row_stride >= n
            && isize::try_from(row_stride).is_ok()
            && end.is_some_and(|end| end <= len))
}

/// `scale · op(a) · op(b)`.
pub fn matmul(
    a: &HostTensor<2>,
    read_a: Read,
    b: &HostTensor<2>,
    read_b: Read,
    scale: f32,
) -> HostTensor<2> {
    let left = Operand::dense(a.values(), a.dims(), read_a);
    let right = Operand::dense(b.values(), b.dims(), read_b);
    let [m, n] = [left.dims[0], right.dims[1]];
    let mut out = zeros(m * n);
    gemm_into(&mut out, n, false, left, right, scale, true);
    HostTensor::new_like(a, out, [m, n])
}

/// `acc += scale · op(a) · op(b)`.
pub fn matmul_add(
    acc: &mut HostTensor<2>,
    a: &HostTensor<2>,
    read_a: Read,
    b: &HostTensor<2>,
    read_b: Read,
    scale: f32,
) {
    let a = Operand::dense(a.values(), a.dims(), read_a);
    let b = Operand::dense(b.values(), b.dims(), read_b);
    let n = acc.dims()[1];
    assert_eq!(
        acc.dims(),
        [a.dims[0], b.dims[1]],
        "matmul_add: accumulator shape"
    );
    gemm_into(acc.values_mut(), n, true, a, b, scale, true);
}

/// `out = scale · a · b` (or `out += …` when `accumulate`) for `out` row-major with rows
/// `out_row_stride` apart; split over all cores when `parallel` and the product is large.
/// Panics when an operand reaches outside its slice, or when the output does or its rows
/// overlap (`out_row_stride < n`).
pub(crate) fn gemm_into(
    out: &mut [f32],
    out_row_stride: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    parallel: bool,
) {
    let ([m, k], [k_b, n]) = (a.dims, b.dims);
    assert_eq!(k, k_b, "matmul: inner dimensions {k} and {k_b} differ");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul: operand outside its slice"
    );
    assert!(
        output_fits([m, n], out_row_stride, out.len()),
        "matmul: output rows overlap or lie outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in out.chunks_mut(out_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let work = m.saturating_mul(n).saturating_mul(k);
    let parallel = parallel && work >= PARALLEL_WORK;
    if parallel && m < FEW_ROWS {
        // SAFETY: as for `gemm_at` below.
        return unsafe { column_bands(out.as_mut_ptr(), out_row_stride, accumulate, a, b, scale) };
    }
    let parallelism = match parallel {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // SAFETY: `gemm_at`'s conditions: `in_bounds` and `output_fits` above, `out` borrowed
    // mutably for the whole call, the operands shared.
    unsafe {
        gemm_at(
            out.as_mut_ptr(),
            out_row_stride,
            accumulate,
            a,
            b,
            scale,
            parallelism,
        )
    }
}

/// Rows below which a large product is split into bands of output columns, one task each:
/// `gemm` runs a product of one row as a matrix-vector product on a single core (decoding one
/// token would use one core), and splits few rows poorly.
const FEW_ROWS: usize = 16;

/// Output columns of one band at least (a multiple of the widest vector).
const MIN_BAND_COLUMNS: usize = 64;

/// [`gemm_into`] for products of few rows: bands of output columns (and of `b`'s columns) on
/// all cores, each band's product on one.
///
/// # Safety
/// As [`gemm_at`], for the whole product.
unsafe fn column_bands(
    out: *mut f32,
    out_row_stride: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
) {
    use rayon::prelude::*;
    let n = b.dims[1];
    let bands = rayon::current_num_threads() * 4;
    let width = n.div_ceil(bands).next_multiple_of(MIN_BAND_COLUMNS);
    let out = SharedOutput(out);
    (0..n.div_ceil(width)).into_par_iter().for_each(|band| {
        let start = band * width;
        let columns = width.min(n - start);
        let b = Operand {
            values: &b.values[start * b.col_stride..],
            dims: [b.dims[0], columns],
            ..b
        };
        // SAFETY: band `band` writes output columns `start..start + columns` of rows < m only,
        // which no other band writes (the bands' column ranges are disjoint), inside the
        // output `gemm_into` checked; `b` is the same matrix cut at column `start`, so its
        // offsets are the original's less `start · col_stride`, inside the slice.
        unsafe {
            let at = out.get().add(start);
            gemm_at(
                at,
                out_row_stride,
                accumulate,
                a,
                b,
                scale,
                gemm::Parallelism::None,
            )
        }
    });
}

/// The output pointer, shared by the tasks of [`column_bands`] (and of `bf16_matmul`), which
/// write disjoint columns.
#[derive(Clone, Copy)]
pub(crate) struct SharedOutput(pub(crate) *mut f32);

// SAFETY: the tasks holding it write disjoint elements (see `column_bands`, and
// `bf16_matmul::matmul`, whose tasks own disjoint blocks of rows and column panels).
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The pointer.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `gemm` of `a · b` (scaled, accumulated or not) into the `[m, n]` output at `out`, rows
/// `out_row_stride` apart.
///
/// # Safety
/// `gemm` reads `a` at `a.values[i · row_stride + j · col_stride]` for i < m, j < k, `b`
/// likewise for i < k, j < n, and reads (when `accumulate`) and writes `out` at
/// `out[i · out_row_stride + j]` for i < m, j < n, nothing else. The caller guarantees that
/// each operand's largest offset lies inside its slice (`Operand::in_bounds`), that the
/// output's does inside memory it may write and nothing else reads or writes meanwhile
/// (`output_fits`, `out_row_stride >= n`, so distinct (i, j) are distinct elements and
/// `gemm`'s threads never write the same one), and that m, n, k > 0, so no pointer dangles;
/// all offsets are non-negative and each stride fits in `isize`.
unsafe fn gemm_at(
    out: *mut f32,
    out_row_stride: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    let ([m, k], n) = (a.dims, b.dims[1]);
    // SAFETY: the caller's conditions above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_row_stride as isize,
            accumulate,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn host(values: Vec<f32>, dims: [usize; 2]) -> HostTensor<2> {
        HostTensor::of(Tensor::from_data(
            TensorData::new(values, dims),
            &Device::flex(),
        ))
    }

    /// `gemm_into` into `out` of an `[m, 1] · [1, n]` product of ones.
    fn ones_into(out: &mut [f32], [m, n]: [usize; 2], out_row_stride: usize) {
        let ones = [1.0; 64];
        let a = Operand::dense(&ones[..m], [m, 1], Read::AsIs);
        let b = Operand::dense(&ones[..n], [1, n], Read::AsIs);
        gemm_into(out, out_row_stride, false, a, b, 1.0, true);
    }

    #[test]
    fn strided_output_rows_are_written_and_the_gaps_kept() {
        let mut out = [9.0; 8];
        ones_into(&mut out, [3, 2], 3);
        assert_eq!(out, [1.0, 1.0, 9.0, 1.0, 1.0, 9.0, 1.0, 1.0]);
    }

    #[test]
    #[should_panic(expected = "matmul: output rows overlap or lie outside its slice")]
    fn overlapping_output_rows_are_refused() {
        // Rows one apart but two long: row i's second element is row i + 1's first.
        ones_into(&mut [0.0; 64], [8, 2], 1);
    }

    #[test]
    #[should_panic(expected = "matmul: output rows overlap or lie outside its slice")]
    fn an_output_past_its_slice_is_refused() {
        ones_into(&mut [0.0; 5], [3, 2], 2);
    }

    #[test]
    #[should_panic(expected = "matmul: output rows overlap or lie outside its slice")]
    fn an_output_stride_that_wraps_around_is_refused() {
        // (m − 1) · stride + n = usize::MAX + 2 wraps to 1 without checked arithmetic.
        ones_into(&mut [0.0; 4], [2, 2], usize::MAX);
    }

    #[test]
    #[should_panic(expected = "matmul: operand outside its slice")]
    fn an_operand_stride_that_wraps_around_is_refused() {
        // (rows − 1) · row_stride = 2 · 2⁶³ wraps to 0 without checked arithmetic.
        let values = [1.0; 4];
        let a = Operand {
            values: &values,
            dims: [3, 1],
            row_stride: 1 << (usize::BITS - 1),
            col_stride: 1,
        };
        let b = Operand::dense(&values[..1], [1, 1], Read::AsIs);
        gemm_into(&mut [0.0; 3], 1, false, a, b, 1.0, false);
    }

    #[test]
    fn products_read_either_operand_transposed_and_accumulate() {
        // a = [[1, 2, 3], [4, 5, 6]], b = [[1, 0], [0, 1], [1, 1]].
        let a = host(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let b = host(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]);
        let ab = matmul(&a, Read::AsIs, &b, Read::AsIs, 1.0);
        assert_eq!(ab.values(), &[4.0, 5.0, 10.0, 11.0]);
        // bᵀ · aᵀ = (a · b)ᵀ, at twice the scale.
        let ba = matmul(&b, Read::Transposed, &a, Read::Transposed, 2.0);
        assert_eq!(ba.values(), &[8.0, 20.0, 10.0, 22.0]);
        let mut acc = ab;
        matmul_add(&mut acc, &a, Read::AsIs, &b, Read::AsIs, -1.0);
        assert_eq!(acc.values(), &[0.0; 4]);
        let empty = host(vec![], [2, 0]);
        let none = host(vec![], [0, 2]);
        assert_eq!(
            matmul(&empty, Read::AsIs, &none, Read::AsIs, 1.0).values(),
            &[0.0; 4]
        );
    }

    #[test]
    fn products_of_few_rows_split_into_column_bands_equal_the_definition() {
        let (k, n) = (300, 1001);
        let value = |i: usize| ((i * 7919 % 263) as f32 - 131.0) / 131.0;
        for m in [1, 3, FEW_ROWS - 1] {
            let a: Vec<f32> = (0..m * k).map(value).collect();
            let w: Vec<f32> = (0..n * k).map(|i| value(i + 17)).collect(); // [n, k]
            let want: Vec<f32> = (0..m * n)
                .map(|at| {
                    let (i, j) = (at / n, at % n);
                    let dot: f64 = (0..k).map(|c| (a[i * k + c] * w[j * k + c]) as f64).sum();
                    0.5 * dot as f32
                })
                .collect();
            let w_t: Vec<f32> = (0..k * n).map(|at| w[(at % n) * k + at / n]).collect(); // [k, n]
            let (a, w, w_t) = (host(a, [m, k]), host(w, [n, k]), host(w_t, [k, n]));
            let got = matmul(&a, Read::AsIs, &w, Read::Transposed, 0.5);
            let close = |got: &[f32], want: &[f32]| {
                got.iter()
                    .zip(want)
                    .all(|(g, w)| (g - w).abs() <= 1e-4 * w.abs().max(1.0))
            };
            assert!(close(got.values(), &want), "{m} rows, b transposed");
            let got = matmul(&a, Read::AsIs, &w_t, Read::AsIs, 0.5);
            assert!(close(got.values(), &want), "{m} rows, b as stored");
            let mut acc = got;
            matmul_add(&mut acc, &a, Read::AsIs, &w, Read::Transposed, -0.5);
            assert!(
                acc.values().iter().all(|v| v.abs() <= 1e-4),
                "{m} rows, accumulated"
            );
        }
    }
}
