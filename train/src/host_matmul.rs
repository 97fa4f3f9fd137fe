//! Matrix products of host tensors straight through `gemm`, the kernel burn-flex calls itself.
//! Either operand is read transposed through its strides (no copy), a scale and an addition to
//! an existing result ride along in the kernel, and the output buffer is written once:
//! burn-flex zeroes every product's output and then copies it to realign it, which was a tenth
//! of a training step.

use crate::host_tensor::HostTensor;

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

/// A row-major `[rows, cols]` matrix read as `read`: its shape and `(column, row)` strides.
fn operand(matrix: &HostTensor<2>, read: Read) -> ([usize; 2], [isize; 2]) {
    let [rows, cols] = matrix.dims();
    match read {
        Read::AsIs => ([rows, cols], [1, cols as isize]),
        Read::Transposed => ([cols, rows], [cols as isize, 1]),
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
    let ([m, _], _) = operand(a, read_a);
    let ([_, n], _) = operand(b, read_b);
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `gemm` without `read_dst` writes every one of the `m · n` outputs before
    // `set_len` exposes them (`product` handles `k = 0`, where it would not).
    unsafe {
        product(out.as_mut_ptr(), false, a, read_a, b, read_b, scale);
        out.set_len(m * n);
    }
    HostTensor::new(out, [m, n])
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
    let ([m, _], _) = operand(a, read_a);
    let ([_, n], _) = operand(b, read_b);
    assert_eq!(acc.dims(), [m, n], "matmul_add: accumulator shape");
    // SAFETY: `acc` holds `m · n` initialised values, row-major.
    unsafe {
        product(
            acc.values_mut().as_mut_ptr(),
            true,
            a,
            read_a,
            b,
            read_b,
            scale,
        )
    }
}

/// `out (+)= scale · op(a) · op(b)` into the row-major `[m, n]` buffer at `out`.
///
/// # Safety
/// `out` must be valid for `m · n` writes, and for reads when `accumulate`.
unsafe fn product(
    out: *mut f32,
    accumulate: bool,
    a: &HostTensor<2>,
    read_a: Read,
    b: &HostTensor<2>,
    read_b: Read,
    scale: f32,
) {
    let ([m, k], [a_cs, a_rs]) = operand(a, read_a);
    let ([k_b, n], [b_cs, b_rs]) = operand(b, read_b);
    assert_eq!(k, k_b, "matmul: inner dimensions {k} and {k_b} differ");
    if k == 0 {
        if !accumulate {
            // SAFETY: the caller guarantees `m · n` writable values at `out`.
            unsafe { std::ptr::write_bytes(out, 0, m * n) };
        }
        return;
    }
    let parallelism = match m * n * k >= PARALLEL_WORK {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // SAFETY: the strides describe `a` and `b` within their buffers (checked shapes above);
    // `out` is as the caller guarantees.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            accumulate,
            a.values().as_ptr(),
            a_cs,
            a_rs,
            b.values().as_ptr(),
            b_cs,
            b_rs,
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
    use super::*;

    #[test]
    fn products_read_either_operand_transposed_and_accumulate() {
        // a = [[1, 2, 3], [4, 5, 6]], b = [[1, 0], [0, 1], [1, 1]].
        let a = HostTensor::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let b = HostTensor::new(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]);
        let ab = matmul(&a, Read::AsIs, &b, Read::AsIs, 1.0);
        assert_eq!(ab.values(), &[4.0, 5.0, 10.0, 11.0]);
        // bᵀ · aᵀ = (a · b)ᵀ, at twice the scale.
        let ba = matmul(&b, Read::Transposed, &a, Read::Transposed, 2.0);
        assert_eq!(ba.values(), &[8.0, 20.0, 10.0, 22.0]);
        let mut acc = ab;
        matmul_add(&mut acc, &a, Read::AsIs, &b, Read::AsIs, -1.0);
        assert_eq!(acc.values(), &[0.0; 4]);
        let empty = HostTensor::new(vec![], [2, 0]);
        let none = HostTensor::new(vec![], [0, 2]);
        assert_eq!(
            matmul(&empty, Read::AsIs, &none, Read::AsIs, 1.0).values(),
            &[0.0; 4]
        );
    }
}
