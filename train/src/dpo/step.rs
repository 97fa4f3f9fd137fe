//! One DPO optimizer step: every micro-batch of pairs of the accumulation window through
//! [`dpo_forward_backward`], the loss the mean over the window's pairs (as TRL's with
//! gradient accumulation), then clipping and the optimizer, as for SFT.

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use feinschliff_data::batch::Batch;
use feinschliff_model::llama::Llama;

use crate::dpo::loss::{DpoSettings, PreferenceMetrics};
use crate::dpo::pass::dpo_forward_backward;
use crate::pass::backprop::AdapterGrads;
use crate::pass::dropout_mask::child_seed;
use crate::train_step::{StepReport, StepSettings, apply_gradients};

/// A micro-batch of pairs (rows `2j`, `2j + 1`) with the reference's log-probability of each
/// row's answer.
pub struct PairBatch {
    /// The rows.
    pub batch: Batch,
    /// The reference's log-probability per row.
    pub reference: Vec<f64>,
}

/// Trains `model` on the pairs of `batches` (one accumulation window); returns the updated
/// model, the step's report (its loss the mean pair loss) and the pairs' metrics.
pub fn dpo_step(
    model: Llama,
    optim: &mut ModuleOptimizer,
    batches: &[PairBatch],
    dpo: DpoSettings,
    settings: StepSettings,
    device: &Device,
) -> (Llama, StepReport, PreferenceMetrics) {
    let pairs: usize = batches.iter().map(|b| b.batch.rows / 2).sum();
    let pair_scale = 1.0 / pairs.max(1) as f64;
    let mut grads = AdapterGrads::default();
    let mut metrics = PreferenceMetrics::default();
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    for (index, micro) in batches.iter().enumerate() {
        let seed = child_seed(settings.dropout_seed, index as u64);
        let result = dpo_forward_backward(
            &model,
            &micro.batch,
            &micro.reference,
            dpo,
            pair_scale,
            seed,
            settings.mlp,
            device,
            &mut grads,
        );
        metrics = metrics.merge(&result.metrics);
        forward_seconds += result.pass.forward_seconds;
        backward_seconds += result.pass.backward_seconds;
    }
    let (model, grad_norm, optimizer_seconds) = apply_gradients(model, optim, grads, settings);
    let report = StepReport {
        loss: metrics.loss,
        grad_norm,
        forward_seconds,
        backward_seconds,
        optimizer_seconds,
    };
    (model, report, metrics)
}
