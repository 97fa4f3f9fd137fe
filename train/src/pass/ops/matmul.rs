//! Matrix products with the frozen base: on host tensors of flex `gemm` (`kernels::matmul`,
//! either operand read transposed through its strides, scale and addition inside the kernel),
//! or for a bf16 base on a CPU with AVX512-BF16 the bf16 kernel (`kernels::bf16_matmul`);
//! Burn's product in the base's dtype elsewhere (LibTorch multiplies bf16 in bf16).

use burn::tensor::{DType, Int, Tensor};
use feinschliff_model::kernels::bf16_matmul;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_flex};
use feinschliff_model::kernels::matmul as host_matmul;

pub use feinschliff_model::kernels::matmul::Read;

/// `op(a) · op(b)`; see [`scaled_matmul`].
pub fn matmul(a: Tensor<2>, read_a: Read, b: Tensor<2>, read_b: Read) -> Tensor<2> {
    scaled_matmul(a, read_a, b, read_b, 1.0)
}

/// `scale · op(a) · op(b)` with `a` in f32, computed in `b`'s dtype (a bf16 frozen base
/// multiplies in bf16 on LibTorch, and on flex where the CPU has AVX512-BF16) and returned in
/// f32.
pub fn scaled_matmul(
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    match is_flex(&a.device()) {
        true => host_scaled_matmul(a, read_a, b, read_b, scale),
        false => burn_scaled_matmul(a, read_a, b, read_b, scale),
    }
}

/// [`scaled_matmul`] through `gemm`.
fn host_scaled_matmul(
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    if read_a == Read::AsIs && bf16_matmul::applies(&a, &b) {
        return bf16_matmul::tensor_product(a, b, read_b, scale as f32, None);
    }
    let (a, b) = (HostTensor::of(a), HostTensor::of(b));
    host_matmul::matmul(&a, read_a, &b, read_b, scale as f32).into_tensor()
}

/// [`scaled_matmul`] in Burn operations.
fn burn_scaled_matmul(
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    let dtype = b.dtype();
    let product = read(a.cast(dtype), read_a)
        .matmul(read(b, read_b))
        .cast(DType::F32);
    match scale == 1.0 {
        true => product,
        false => product.mul_scalar(scale),
    }
}

/// `acc + scale · op(a) · op(b)`, added in place on host tensors; see [`scaled_matmul`].
pub fn add_matmul(
    acc: Tensor<2>,
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    match is_flex(&acc.device()) {
        true => host_add_matmul(acc, a, read_a, b, read_b, scale),
        false => acc + burn_scaled_matmul(a, read_a, b, read_b, scale),
    }
}

/// [`add_matmul`] through `gemm`, accumulating into `acc`'s buffer.
fn host_add_matmul(
    acc: Tensor<2>,
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    if read_a == Read::AsIs && bf16_matmul::applies(&a, &b) {
        return bf16_matmul::tensor_product(a, b, read_b, scale as f32, Some(acc));
    }
    let mut acc = HostTensor::of(acc);
    let (a, b) = (HostTensor::of(a), HostTensor::of(b));
    host_matmul::matmul_add(&mut acc, &a, read_a, &b, read_b, scale as f32);
    acc.into_tensor()
}

/// `matrix` read as `how`.
fn read(matrix: Tensor<2>, how: Read) -> Tensor<2> {
    match how {
        Read::AsIs => matrix,
        Read::Transposed => matrix.transpose(),
    }
}

/// Rows `ids` of the (possibly bf16) matrix `table`, in f32.
pub fn embedding_rows(table: Tensor<2>, ids: Tensor<1, Int>) -> Tensor<2> {
    table.select(0, ids).cast(DType::F32)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, random};

    /// `[rows, cols]` as `op` reads it: the stored shape of an operand read as `how`.
    fn stored([rows, cols]: [usize; 2], how: Read) -> [usize; 2] {
        match how {
            Read::AsIs => [rows, cols],
            Read::Transposed => [cols, rows],
        }
    }

    #[test]
    fn products_agree_with_burn_for_every_read_and_scale() {
        let (m, k, n) = (37, 70, 29);
        let reads = [Read::AsIs, Read::Transposed];
        for (case, (read_a, read_b)) in reads
            .iter()
            .flat_map(|&a| reads.iter().map(move |&b| (a, b)))
            .enumerate()
        {
            let seed = 10 * case as u64;
            let a = random(seed, stored([m, k], read_a));
            let b = random(seed + 1, stored([k, n], read_b));
            let acc = random(seed + 2, [m, n]);
            for scale in [1.0, 0.625] {
                let what = format!("{read_a:?}·{read_b:?}, scale {scale}");
                assert_close(
                    &what,
                    host_scaled_matmul(a.clone(), read_a, b.clone(), read_b, scale),
                    burn_scaled_matmul(a.clone(), read_a, b.clone(), read_b, scale),
                    1e-5,
                );
                assert_close(
                    &format!("{what}, added"),
                    host_add_matmul(acc.clone(), a.clone(), read_a, b.clone(), read_b, scale),
                    acc.clone() + burn_scaled_matmul(a.clone(), read_a, b.clone(), read_b, scale),
                    1e-5,
                );
            }
        }
    }
}
