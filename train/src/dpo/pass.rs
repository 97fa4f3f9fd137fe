//! DPO through the training pass: a micro-batch holds pairs as consecutive rows (chosen, then
//! rejected); the policy's log-probability of each row's answer is the negated sum of its
//! scored tokens' losses, the pairs' terms follow ([`DpoSettings::pair`]), and each row's
//! tokens get the gradient `∂ loss / ∂ log p(row)` through the output head. The head's loss is
//! computed twice for this (once for the sums, once with their weights): the weights depend
//! on whole rows, and the head works in chunks of rows.

use burn::tensor::{Device, Tensor};
use feinschliff_data::batch::{Batch, IGNORE_INDEX};
use feinschliff_model::llama::Llama;

use crate::dpo::loss::{DpoSettings, PairLogProbs, PairTerms, PreferenceMetrics};
use crate::pass::backprop::{
    AdapterGrads, MicroBatchResult, MlpActivations, forward_backward_with,
};
use crate::pass::ops::{Head, head_loss, head_loss_backward};
use crate::pass::score::final_hidden;

/// What one micro-batch of pairs gives.
pub struct PairsResult {
    /// Timings of the pass (its `loss` is the sum of the pairs' losses times the scale).
    pub pass: MicroBatchResult,
    /// The pairs' terms.
    pub metrics: PreferenceMetrics,
}

/// Runs the pairs of `batch` (rows `2j`, `2j + 1`) through `model` and adds the gradient of
/// `pair_scale · Σ_pairs loss` to `grads`; `reference[row]` is the reference's log-probability
/// of each row's answer.
#[allow(
    clippy::too_many_arguments,
    reason = "the training pass's settings, one by one"
)]
pub fn dpo_forward_backward(
    model: &Llama,
    batch: &Batch,
    reference: &[f64],
    settings: DpoSettings,
    pair_scale: f64,
    dropout_seed: u64,
    mlp: MlpActivations,
    device: &Device,
    grads: &mut AdapterGrads,
) -> PairsResult {
    let mut metrics = PreferenceMetrics::default();
    let loss = |normed: Tensor<2>, head: &Head, targets: &[i64]| {
        let policy = answer_log_probs(&normed, batch.len, head, targets, device);
        let terms = pair_terms(&policy, reference, &scored_per_row(batch), settings);
        let mut loss = 0.0;
        let mut d_rows = Vec::with_capacity(batch.rows);
        for (pair, terms) in terms.iter().enumerate() {
            metrics.add(terms);
            loss += pair_scale * terms.loss;
            for (row, d_log_p) in [(2 * pair, terms.d_chosen), (2 * pair + 1, terms.d_rejected)] {
                let range = row * batch.len..(row + 1) * batch.len;
                let rows = normed.clone().narrow(0, range.start, batch.len);
                // The head's loss is Σ −log p: its scale is −∂ loss / ∂ log p.
                let scale = -pair_scale * d_log_p;
                d_rows.push(head_loss_backward(rows, head, &targets[range], scale, device).1);
            }
        }
        (loss, Tensor::cat(d_rows, 0))
    };
    let pass = forward_backward_with(model, batch, dropout_seed, mlp, device, grads, loss);
    PairsResult { pass, metrics }
}

/// The terms of the pairs of rows `2j`, `2j + 1`, from the policy's and the reference's
/// log-probability of each row's answer and its number of scored tokens.
pub fn pair_terms(
    policy: &[f64],
    reference: &[f64],
    scored: &[usize],
    settings: DpoSettings,
) -> Vec<PairTerms> {
    assert_eq!(policy.len() % 2, 0, "pairs fill two rows each");
    assert_eq!(reference.len(), policy.len(), "a reference value per row");
    (0..policy.len() / 2)
        .map(|pair| {
            let (c, r) = (2 * pair, 2 * pair + 1);
            settings.pair(&PairLogProbs {
                chosen: policy[c],
                rejected: policy[r],
                reference_chosen: reference[c],
                reference_rejected: reference[r],
                chosen_tokens: scored[c],
                rejected_tokens: scored[r],
            })
        })
        .collect()
}

/// The number of scored tokens of each row of `batch`.
fn scored_per_row(batch: &Batch) -> Vec<usize> {
    let rows = batch.labels.chunks(batch.len);
    rows.map(|labels| labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
        .collect()
}

/// The log-probability of each row's scored tokens under `model` (its adapters as they are;
/// no dropout, no gradient).
pub fn row_log_probs(model: &Llama, batch: &Batch, device: &Device) -> Vec<f64> {
    let (normed, targets) = final_hidden(model, batch, device);
    answer_log_probs(&normed, batch.len, &Head::of(model), &targets, device)
}

/// `Σ log p(target)` over each row of `len` tokens of the final hidden states `normed`.
fn answer_log_probs(
    normed: &Tensor<2>,
    len: usize,
    head: &Head,
    targets: &[i64],
    device: &Device,
) -> Vec<f64> {
    let rows = normed.dims()[0] / len;
    (0..rows)
        .map(|row| {
            let hidden = normed.clone().narrow(0, row * len, len);
            -head_loss(hidden, head, &targets[row * len..(row + 1) * len], device)
        })
        .collect()
}
