//! Causal language-model loss: the logits at position `t` predict the label at `t + 1`;
//! labels equal to [`IGNORE_INDEX`] are not scored.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// The label of a position that is not scored (transformers' `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// Summed negative log-likelihood and the number of scored tokens.
#[derive(Debug, Clone)]
pub struct LossSum {
    /// Sum of `-log p(label)` over scored positions, shape `[1]`.
    pub nll: Tensor<1>,
    /// Number of scored positions, shape `[1]`.
    pub tokens: Tensor<1, Int>,
}

/// Shifts `labels` `[batch, seq]` by one against `logits` `[batch, seq, vocab]` and sums the
/// negative log-likelihood of every label that is not [`IGNORE_INDEX`]. Summing (rather than
/// averaging) lets callers normalise over a whole accumulation window.
pub fn causal_lm_loss_sum(logits: Tensor<3>, labels: Tensor<2, Int>) -> LossSum {
    let [batch, seq, vocab] = logits.dims();
    let device = logits.device();
    if seq < 2 {
        return LossSum {
            nll: Tensor::zeros([1], &device),
            tokens: Tensor::zeros([1], &device),
        };
    }
    let n = batch * (seq - 1);
    let logits = logits.narrow(1, 0, seq - 1).reshape([n, vocab]);
    let targets = labels.narrow(1, 1, seq - 1).reshape([n]);
    let scored = targets.clone().not_equal_elem(IGNORE_INDEX);
    let safe_targets = targets
        .mask_fill(scored.clone().bool_not(), 0)
        .reshape([n, 1]);
    let nll = log_softmax(logits, 1)
        .gather(1, safe_targets)
        .reshape([n])
        .neg();
    LossSum {
        nll: (nll * scored.clone().float()).sum(),
        tokens: scored.int().sum(),
    }
}
