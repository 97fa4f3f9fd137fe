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
pub struct Operand<'a> {
    /// The slice holding the matrix.
    pub values: &'a [f32],
    /// Rows and columns.
    pub dims: [usize; 2],
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major `[rows, cols]` matrix starting at `values[0]`, read as `read`.
    pub fn dense(values: &'a [f32], [rows, cols]: [usize; 2], read: Read) -> Self {
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

    /// Whether every element lies inside the slice.
    fn in_bounds(&self) -> bool {
        let [rows, cols] = self.dims;
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.values.len()
    }
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
pub fn gemm_into(
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
        m == 0 || n == 0 || (m - 1) * out_row_stride + n <= out.len(),
        "matmul: output outside its slice"
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
    let parallelism = match parallel && m * n * k >= PARALLEL_WORK {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // SAFETY: the asserts above keep every element of `a`, `b` and `out` inside its slice.
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
