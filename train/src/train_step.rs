//! One optimizer step: every micro-batch of the accumulation window through the training pass
//! ([`crate::pass::backprop`]), the adapter gradients summed and normalised by the trained
//! tokens of the whole window, clipped to a global L2 norm, and applied by the optimizer.

use std::time::Instant;

use burn::module::ParamId;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use feinschliff_data::batch::Batch;

use crate::pass::backprop::{AdapterGrads, MlpActivations, forward_backward};
use crate::pass::dropout_mask::child_seed;
use feinschliff_model::llama::Llama;

/// What one step did and where its time went.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Mean loss per trained token over the window.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds in forward passes and the loss (with the output head's gradient).
    pub forward_seconds: f64,
    /// Seconds in backward passes.
    pub backward_seconds: f64,
    /// Seconds in clipping and the optimizer update.
    pub optimizer_seconds: f64,
}

/// Settings of a step that do not change within a run.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient-norm limit (0 = none).
    pub max_grad_norm: f64,
    /// Seed of this step's dropout masks.
    pub dropout_seed: u64,
    /// What the forward pass keeps of each layer's MLP.
    pub mlp: MlpActivations,
}

/// Trains `model` on the micro-batches `batches` (one accumulation window) and returns the
/// updated model. `device` is the compute device without autodiff.
pub fn train_step(
    model: Llama,
    optim: &mut ModuleOptimizer,
    batches: &[Batch],
    settings: StepSettings,
    device: &Device,
) -> (Llama, StepReport) {
    let window_tokens = batches
        .iter()
        .map(|b| b.trained_tokens)
        .sum::<usize>()
        .max(1) as f64;
    let mut grads = AdapterGrads::default();
    let (mut loss, mut forward_seconds, mut backward_seconds) = (0.0, 0.0, 0.0);
    for (index, batch) in batches.iter().enumerate() {
        let seed = child_seed(settings.dropout_seed, index as u64);
        let result = forward_backward(
            &model,
            batch,
            1.0 / window_tokens,
            seed,
            settings.mlp,
            device,
            &mut grads,
        );
        loss += result.loss;
        forward_seconds += result.forward_seconds;
        backward_seconds += result.backward_seconds;
    }
    let (model, grad_norm, optimizer_seconds) = apply_gradients(model, optim, grads, settings);
    let report = StepReport {
        loss,
        grad_norm,
        forward_seconds,
        backward_seconds,
        optimizer_seconds,
    };
    (model, report)
}

/// Clips the summed gradients `grads` and lets the optimizer update `model` with them; returns
/// the updated model, the gradient norm before clipping and the seconds it took.
pub fn apply_gradients(
    model: Llama,
    optim: &mut ModuleOptimizer,
    grads: AdapterGrads,
    settings: StepSettings,
) -> (Llama, f64, f64) {
    let started = Instant::now();
    let mut params = GradientsParams::new();
    let mut ids = Vec::new();
    for (id, grad) in grads.into_inner() {
        params.register(id, grad);
        ids.push(id);
    }
    let grad_norm = clip_global_norm(&mut params, &ids, settings.max_grad_norm);
    let model = optim.step(settings.lr, model, params);
    (model, grad_norm, started.elapsed().as_secs_f64())
}

/// The seed of step `step`'s dropout masks (0-based) in a run seeded with `seed`.
pub fn dropout_seed(seed: u64, step: usize) -> u64 {
    seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (0 = no clipping), as
/// `torch.nn.utils.clip_grad_norm_`: by `max_norm / (norm + 1e-6)` wherever that is below 1
/// (so also for a norm less than 1e-6 below `max_norm`); returns the norm before clipping.
pub fn clip_global_norm(grads: &mut GradientsParams, ids: &[ParamId], max_norm: f64) -> f64 {
    let squares: f64 = ids
        .iter()
        .filter_map(|id| grads.get::<2>(*id))
        .map(|g| g.square().sum().into_scalar::<f64>())
        .sum();
    let norm = squares.sqrt();
    let factor = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && factor < 1.0 {
        for id in ids {
            if let Some(g) = grads.remove::<2>(*id) {
                grads.register::<2>(*id, g.mul_scalar(factor));
            }
        }
    }
    norm
}
