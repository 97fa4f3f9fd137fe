//! A frozen projection with its LoRA adapter, forward and backward: `y = x Wᵀ + b + s · B A
//! dropout(x)`, with the gradients of the adapter's `A` and `B` and of `x`. A quantized `W`
//! takes the tiled dequantizing products (`quant::product`); no gradient of `W` exists.

use burn::tensor::Tensor;
use feinschliff_model::linear::{FrozenWeight, Linear};
use feinschliff_model::quant::product::{quantized_input_grad, quantized_linear};

use crate::pass::backprop::AdapterGrads;
use crate::pass::dropout_mask::Dropout;
use crate::pass::ops::{Read, add, add_matmul, matmul, scaled_matmul};

/// `x Wᵀ + b` plus the adapter's `s · B A (x ⊙ mask)`; also returns `A (x ⊙ mask)` `[n, r]`.
pub fn linear_forward(
    linear: &Linear,
    x: &Tensor<2>,
    dropout: Option<Dropout>,
) -> (Tensor<2>, Option<Tensor<2>>) {
    use Read::{AsIs, Transposed};
    let mut y = match linear.frozen_weight() {
        FrozenWeight::Dense(weight) => matmul(x.clone(), AsIs, weight.inner(), Transposed),
        FrozenWeight::Quantized(matrix) => quantized_linear(x.clone(), matrix, linear.matmul_dtype),
    };
    if let Some(bias) = &linear.bias {
        y = y + bias.val().inner().unsqueeze::<2>();
    }
    let Some(adapter) = &linear.lora else {
        return (y, None);
    };
    let dropped = match dropout {
        Some(dropout) => dropout.apply(x.clone()),
        None => x.clone(),
    };
    let low_rank = matmul(dropped, AsIs, adapter.lora_a.val().inner(), Transposed);
    let y = add_matmul(
        y,
        low_rank.clone(),
        AsIs,
        adapter.lora_b.val().inner(),
        Transposed,
        adapter.scaling,
    );
    (y, Some(low_rank))
}

/// The gradient with respect to `x` of [`linear_forward`], given `d_y`; adds the adapter's
/// gradients to `grads`: with `u = A (x ⊙ mask)` (`low_rank`), `dB = s · d_yᵀ u`,
/// `du = s · d_y B`, `dA = duᵀ (x ⊙ mask)` and `d_x = d_y W + (du A) ⊙ mask`.
pub fn linear_backward(
    linear: &Linear,
    x: Tensor<2>,
    dropout: Option<Dropout>,
    low_rank: Option<Tensor<2>>,
    d_y: Tensor<2>,
    grads: &mut AdapterGrads,
) -> Tensor<2> {
    use Read::{AsIs, Transposed};
    let d_x = match linear.frozen_weight() {
        FrozenWeight::Dense(weight) => matmul(d_y.clone(), AsIs, weight.inner(), AsIs),
        FrozenWeight::Quantized(matrix) => {
            quantized_input_grad(d_y.clone(), matrix, linear.matmul_dtype)
        }
    };
    let (Some(adapter), Some(low_rank)) = (&linear.lora, low_rank) else {
        return d_x;
    };
    let scaling = adapter.scaling;
    let d_b = scaled_matmul(d_y.clone(), Transposed, low_rank, AsIs, scaling);
    let d_low = scaled_matmul(d_y, AsIs, adapter.lora_b.val().inner(), AsIs, scaling);
    let dropped = match &dropout {
        Some(dropout) => dropout.apply(x),
        None => x,
    };
    let d_a = matmul(d_low.clone(), Transposed, dropped, AsIs);
    grads.add(adapter.lora_a.id, d_a);
    grads.add(adapter.lora_b.id, d_b);
    match dropout {
        Some(dropout) => add(
            d_x,
            &dropout.apply(matmul(d_low, AsIs, adapter.lora_a.val().inner(), AsIs)),
        ),
        None => add_matmul(d_x, d_low, AsIs, adapter.lora_a.val().inner(), AsIs, 1.0),
    }
}
