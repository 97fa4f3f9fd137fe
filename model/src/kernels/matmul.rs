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
    let parallelism = match parallel && work >= PARALLEL_WORK {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // SAFETY: `gemm` reads `a` at `a.values[i · row_stride + j · col_stride]` for i < m,
    // j < k, `b` likewise for i < k, j < n, and reads (when `accumulate`) and writes `out` at
    // `out[i · out_row_stride + j]` for i < m, j < n, nothing else. `in_bounds` proved with
    // checked arithmetic that the largest offset of each operand lies inside its slice, and
    // `output_fits` that the largest output offset does; all offsets are non-negative, and
    // each stride fits in `isize`, so the casts below keep their values. Since
    // `out_row_stride >= n`, distinct (i, j) are distinct output elements, so the tiles that
    // `gemm` hands to different threads never write the same element. `out` is borrowed
    // mutably and the operands shared, so they cannot alias one another, and nothing else
    // touches them until the call returns. m, n, k > 0 here, so no pointer is dangling.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
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
}
