//! The product of an input with a weight in Hugging Face layout, `x Wᵀ + b` with `W` of shape
//! `[out, in]`, shared by the frozen projections and their LoRA adapters.

use burn::tensor::{DType, Tensor};

use crate::kernels::bf16_matmul;
use crate::kernels::matmul::Read;

/// `tensor` in `dtype`: itself, or a cast copy.
pub fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: DType) -> Tensor<D> {
    match tensor.dtype() == dtype {
        true => tensor,
        false => tensor.cast(dtype),
    }
}

/// Rows of a stored matrix cast at a time by [`row_bands`]: 128 MiB of f32 at a width of 4096.
pub const CAST_BAND_ROWS: usize = 8192;

/// `w` `[rows, cols]` in bands of rows, each cast to `dtype` only when it is taken, with the
/// index of its first row. A matrix stored in one dtype and multiplied in another (a bf16 base
/// on flex, whose products are f32) thus never exists whole in the products' dtype; a matrix
/// already in `dtype` is one band, itself.
pub fn row_bands(w: &Tensor<2>, dtype: DType) -> impl Iterator<Item = (usize, Tensor<2>)> + '_ {
    let rows = w.dims()[0];
    let band = match w.dtype() == dtype {
        true => rows.max(1),
        false => CAST_BAND_ROWS,
    };
    (0..rows).step_by(band).map(move |start| {
        let len = band.min(rows - start);
        (start, in_dtype(w.clone().narrow(0, start, len), dtype))
    })
}

/// The tensors of `parts` side by side along `dim`: the one part itself when there is one.
pub fn concat<const D: usize>(mut parts: Vec<Tensor<D>>, dim: usize) -> Tensor<D> {
    match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Tensor::cat(parts, dim),
    }
}

/// `x Wᵀ + b` for a weight in HF layout `[out, in]`, computed in the weight's dtype (a bf16
/// base computes in bf16: Burn's product, or on flex the bf16 kernel where the CPU has
/// AVX512-BF16) and returned in `x`'s. The rows of `x` are flattened into one
/// 2-D product so the transposed weight goes to the matmul as a strided view: Burn's `linear`
/// would first give it a batch dimension, which makes the backend copy the whole weight on
/// every call.
pub fn linear_hf<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dtype = x.dtype();
    let out_features = weight.dims()[0];
    linear_rows(x, out_features, bias, |rows| {
        if bf16_matmul::applies(&rows, &weight) {
            return bf16_matmul::tensor_product(rows, weight, Read::Transposed, 1.0, None)
                .cast(dtype);
        }
        rows.cast(weight.dtype())
            .matmul(weight.transpose())
            .cast(dtype)
    })
}

/// `t`, whose last dimension has `n` values and all others one, shaped `[1, …, 1, n]` to
/// broadcast over the last dimension of a `D`-tensor.
pub fn last_dim<const S: usize, const D: usize>(t: Tensor<S>) -> Tensor<D> {
    let mut dims = [1; D];
    dims[D - 1] = t.dims()[S - 1];
    t.reshape(dims)
}

/// `product(rows of x) + b`, for a `product` that maps `[rows, in]` to `[rows, out_features]`:
/// the last dimension of `x` replaced by `out_features`.
pub fn linear_rows<const D: usize>(
    x: Tensor<D>,
    out_features: usize,
    bias: Option<Tensor<1>>,
    product: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Tensor<D> {
    let mut dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let out = product(x.reshape([rows, dims[D - 1]]));
    let out = match bias {
        Some(bias) => out + bias.unsqueeze::<2>(),
        None => out,
    };
    dims[D - 1] = out_features;
    out.reshape(dims)
}
