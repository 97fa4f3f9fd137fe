//! A frozen projection with its LoRA adapter, forward and backward: `y = x Wᵀ + b + s · B A
//! dropout(x)`, with the gradients of the adapter's `A` and `B` and of `x`. A quantized `W`
//! takes the tiled dequantizing products (`quant::product`); no gradient of `W` exists.
//!
//! With DoRA (PEFT's formula, `LoraAdapter::forward`), writing `x̃ = dropout(x)`, `z = x̃ Wᵀ`
//! and `g = m / ‖W + s·BA‖` per output feature (the norm a constant):
//! `y = x Wᵀ + b + (g − 1) ⊙ z + g ⊙ s · B A x̃`; without dropout `z = x Wᵀ` and
//! `y = g ⊙ (x Wᵀ + s · B A x) + b`.

use burn::tensor::Tensor;
use feinschliff_model::linear::{FrozenWeight, Linear};
use feinschliff_model::lora::{LoraAdapter, dora_norm};
use feinschliff_model::quant::product::{quantized_input_grad, quantized_linear};

use crate::pass::backprop::AdapterGrads;
use crate::pass::dropout_mask::Dropout;
use crate::pass::ops::{Read, add, add_matmul, matmul, scaled_matmul};

/// What an adapter's backward pass needs from its forward pass.
pub struct AdapterTape {
    /// `A x̃` `[n, r]`.
    low_rank: Tensor<2>,
    /// DoRA's part, with DoRA.
    dora: Option<DoraTape>,
}

/// What DoRA's backward pass needs.
struct DoraTape {
    /// `z + s · B A x̃` `[n, out]`, the direction before scaling.
    direction: Tensor<2>,
    /// `g = m / ‖W + s·BA‖` `[1, out]`.
    scale: Tensor<2>,
    /// `‖W + s·BA‖` `[1, out]`.
    norm: Tensor<2>,
}

/// `x Wᵀ` (no bias) by the frozen weight, dense or quantized.
fn frozen_product(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    match linear.frozen_weight() {
        FrozenWeight::Dense(weight) => matmul(x, Read::AsIs, weight.inner(), Read::Transposed),
        FrozenWeight::Quantized(matrix) => quantized_linear(x, matrix, linear.matmul_dtype),
    }
}

/// `d_y W`, the input gradient of [`frozen_product`].
fn frozen_input_grad(linear: &Linear, d_y: Tensor<2>) -> Tensor<2> {
    match linear.frozen_weight() {
        FrozenWeight::Dense(weight) => matmul(d_y, Read::AsIs, weight.inner(), Read::AsIs),
        FrozenWeight::Quantized(matrix) => quantized_input_grad(d_y, matrix, linear.matmul_dtype),
    }
}

/// `x Wᵀ + b` plus what the adapter adds; also returns what the backward pass needs.
pub fn linear_forward(
    linear: &Linear,
    x: &Tensor<2>,
    dropout: Option<Dropout>,
) -> (Tensor<2>, Option<AdapterTape>) {
    use Read::{AsIs, Transposed};
    let base = frozen_product(linear, x.clone());
    let bias = |y: Tensor<2>| match &linear.bias {
        Some(bias) => y + bias.val().inner().unsqueeze::<2>(),
        None => y,
    };
    let Some(adapter) = &linear.lora else {
        return (bias(base), None);
    };
    let dropped = match &dropout {
        Some(dropout) => dropout.apply(x.clone()),
        None => x.clone(),
    };
    let low_rank = matmul(
        dropped.clone(),
        AsIs,
        adapter.lora_a.val().inner(),
        Transposed,
    );
    let Some(magnitude) = &adapter.magnitude else {
        let b = adapter.lora_b.val().inner();
        let y = add_matmul(
            bias(base),
            low_rank.clone(),
            AsIs,
            b,
            Transposed,
            adapter.scaling,
        );
        let tape = AdapterTape {
            low_rank,
            dora: None,
        };
        return (y, Some(tape));
    };
    let norm = weight_norm(linear, adapter);
    let scale = magnitude.val().inner() / norm.clone();
    let dropped_base = dropout.map(|_| frozen_product(linear, dropped));
    let z = dropped_base.clone().unwrap_or_else(|| base.clone());
    let b = adapter.lora_b.val().inner();
    let direction = add_matmul(z, low_rank.clone(), AsIs, b, Transposed, adapter.scaling);
    let scaled = direction.clone() * scale.clone();
    let y = match dropped_base {
        None => bias(scaled),
        Some(z) => bias(add(base, &scaled) - z),
    };
    let dora = DoraTape {
        direction,
        scale,
        norm,
    };
    let tape = AdapterTape {
        low_rank,
        dora: Some(dora),
    };
    (y, Some(tape))
}

/// `‖W + s·BA‖` per output row, `[1, out]`, on the device of the pass.
fn weight_norm(linear: &Linear, adapter: &LoraAdapter) -> Tensor<2> {
    let a = adapter.lora_a.val().inner();
    let weight = linear.dense_weight(&a.device()).inner();
    dora_norm(weight, a, adapter.lora_b.val().inner(), adapter.scaling)
}

/// The gradient with respect to `x` of [`linear_forward`], given `d_y`; adds the adapter's
/// gradients to `grads`. With `u = A x̃` and `e = d_y` (LoRA) or `g ⊙ d_y` (DoRA):
/// `dB = s · eᵀ u`, `du = s · e B`, `dA = duᵀ x̃`; DoRA's `dm = Σ_rows (d_y ⊙ direction) /
/// norm`; `d_x = e W + du A` without dropout, `d_y W + ((e − d_y) W + du A) ⊙ mask` with it.
pub fn linear_backward(
    linear: &Linear,
    x: Tensor<2>,
    dropout: Option<Dropout>,
    tape: Option<AdapterTape>,
    d_y: Tensor<2>,
    grads: &mut AdapterGrads,
) -> Tensor<2> {
    use Read::{AsIs, Transposed};
    let (Some(adapter), Some(tape)) = (&linear.lora, tape) else {
        return frozen_input_grad(linear, d_y);
    };
    let (e, d_x) = match tape.dora {
        None => (d_y.clone(), frozen_input_grad(linear, d_y)),
        Some(dora) => {
            let magnitude = adapter
                .magnitude
                .as_ref()
                .expect("a DoRA tape has a magnitude");
            let d_m = (d_y.clone() * dora.direction).sum_dim(0) / dora.norm;
            grads.add(magnitude.id, d_m);
            let e = d_y.clone() * dora.scale;
            let d_x = match &dropout {
                None => frozen_input_grad(linear, e.clone()),
                Some(dropout) => {
                    let outside = frozen_input_grad(linear, d_y.clone());
                    let inside = dropout.apply(frozen_input_grad(linear, e.clone() - d_y));
                    add(outside, &inside)
                }
            };
            (e, d_x)
        }
    };
    let scaling = adapter.scaling;
    let d_b = scaled_matmul(e.clone(), Transposed, tape.low_rank, AsIs, scaling);
    let d_low = scaled_matmul(e, AsIs, adapter.lora_b.val().inner(), AsIs, scaling);
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
