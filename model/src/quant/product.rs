//! Products with a quantized frozen weight on any device: on host tensors without autodiff
//! the tiled kernels of `kernels::quant_matmul` (no dense copy of the weight), elsewhere the
//! weight dequantized for this one product, in the product dtype, and Burn's matmul (one
//! matrix at a time: LibTorch CUDA multiplies it in bf16; autodiff sees a constant).

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::QuantizedMatrix;
use crate::kernels::host_tensor::{HostTensor, is_host};
use crate::kernels::quant_matmul;

/// `x Wᵀ` (`[n, out]`) for `x` `[n, in]` and the quantized `W` `[out, in]`.
pub fn quantized_linear(x: Tensor<2>, w: &QuantizedMatrix, products: DType) -> Tensor<2> {
    match takes_host_path(&x) {
        true => quant_matmul::linear(&HostTensor::of(x), w).into_tensor(),
        false => {
            let dtype = x.dtype();
            let weight = dequantized(w, &x.device(), products);
            x.cast(products).matmul(weight.transpose()).cast(dtype)
        }
    }
}

/// `d_y W` (`[n, in]`) for `d_y` `[n, out]`: the input gradient of [`quantized_linear`].
pub fn quantized_input_grad(d_y: Tensor<2>, w: &QuantizedMatrix, products: DType) -> Tensor<2> {
    match takes_host_path(&d_y) {
        true => quant_matmul::linear_input_grad(&HostTensor::of(d_y), w).into_tensor(),
        false => {
            let dtype = d_y.dtype();
            let weight = dequantized(w, &d_y.device(), products);
            d_y.cast(products).matmul(weight).cast(dtype)
        }
    }
}

/// `w` as a dense `dtype` tensor on `device`.
pub fn dequantized(w: &QuantizedMatrix, device: &Device, dtype: DType) -> Tensor<2> {
    let dense = Tensor::<2>::from_data(TensorData::new(w.dequantize(), w.dims()), device);
    match dtype {
        DType::F32 => dense,
        other => dense.cast(other),
    }
}

/// Whether `x`'s products run on the host kernels: host memory, and no autodiff graph to
/// extend.
fn takes_host_path(x: &Tensor<2>) -> bool {
    is_host(&x.device()) && !x.is_autodiff()
}
