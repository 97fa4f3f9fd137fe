//! The training pass's forward alone, for evaluation: the same host kernels (or Burn
//! operations off the host), without dropout, each layer's tape dropped as soon as the layer
//! is done, and the loss without its gradient.

use burn::tensor::{Device, Tensor};
use feinschliff_data::batch::Batch;
use feinschliff_model::llama::Llama;

use crate::pass::backprop::{LayerMasks, MlpActivations, Pass, layer_forward, shifted_targets};
use crate::pass::ops::{Head, head_loss, rms_norm};

/// `Σ −log p(label)` over the scored tokens of `batch` (labels shifted by one, `-100`
/// ignored), with the adapters on and no dropout; `device` is the device without autodiff.
pub fn loss_sum(model: &Llama, batch: &Batch, device: &Device) -> f64 {
    let (normed, targets) = final_hidden(model, batch, device);
    head_loss(normed, &Head::of(model), &targets, device)
}

/// The final normed hidden states of `batch` `[rows · len, hidden]` (adapters on, no dropout)
/// and the targets they predict (labels shifted by one).
pub fn final_hidden(model: &Llama, batch: &Batch, device: &Device) -> (Tensor<2>, Vec<i64>) {
    let (pass, mut x) = Pass::start(model, batch, device);
    let masks = LayerMasks::none();
    for layer in &model.model.layers {
        x = layer_forward(layer, x, &pass, &masks, MlpActivations::Recompute).0;
    }
    let normed = rms_norm(&model.model.norm, x);
    (normed, shifted_targets(batch))
}
