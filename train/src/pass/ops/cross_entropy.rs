//! The output head's cross-entropy loss with its gradient, in chunks of rows so the full
//! `[tokens, vocab]` logits never exist. On host tensors the fused kernel of `kernels::cpu`
//! turns each chunk's logits into their gradient in place; elsewhere Burn operations compute
//! the log-softmax and the loss stays on the device until the end.

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::batch::IGNORE_INDEX;
use feinschliff_model::kernels::cpu as cpu_kernels;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};

use super::matmul::{Read, embedding_rows, matmul};

/// Rows of the output head computed at once: `rows × vocab` floats of logits.
const HEAD_CHUNK_ROWS: usize = 256;

/// Loss `scale · Σ nll` of the output head over `hidden` `[n, width]` and its gradient with
/// respect to `hidden`, `rows` at a time: `d_logits = scale · (softmax − onehot)` on scored
/// rows, so `d_hidden = (scale·p) W − scale · W[target]`.
pub fn head_loss_backward(
    hidden: Tensor<2>,
    head: Tensor<2>,
    targets: &[i64],
    scale: f64,
    device: &Device,
) -> (f64, Tensor<2>) {
    let [n, width] = hidden.dims();
    let mut loss = LossSum::new(device);
    let mut d_hidden = Vec::with_capacity(n.div_ceil(HEAD_CHUNK_ROWS));
    for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
        let rows = HEAD_CHUNK_ROWS.min(n - start);
        let chunk_targets = &targets[start..start + rows];
        let Some(weights) = chunk_weights(chunk_targets, scale) else {
            d_hidden.push(Tensor::zeros([rows, width], device));
            continue;
        };
        let logits = chunk_logits(&hidden, &head, start, rows);
        let (chunk_loss, d_chunk) = chunk_loss_backward(logits, &head, chunk_targets, weights);
        loss = loss.add(chunk_loss);
        d_hidden.push(d_chunk);
    }
    (loss.total(), Tensor::cat(d_hidden, 0))
}

/// Loss `Σ nll` of the output head over `hidden` `[n, width]`, without a gradient (for
/// evaluation), `rows` at a time like [`head_loss_backward`].
pub fn head_loss(hidden: Tensor<2>, head: Tensor<2>, targets: &[i64], device: &Device) -> f64 {
    let n = hidden.dims()[0];
    let mut loss = LossSum::new(device);
    for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
        let rows = HEAD_CHUNK_ROWS.min(n - start);
        let chunk_targets = &targets[start..start + rows];
        let Some(weights) = chunk_weights(chunk_targets, 1.0) else {
            continue;
        };
        let logits = chunk_logits(&hidden, &head, start, rows);
        loss = loss.add(chunk_loss(logits, chunk_targets, weights));
    }
    loss.total()
}

/// `scale` for each scored target, `0` for the others; `None` when none is scored.
fn chunk_weights(targets: &[i64], scale: f64) -> Option<Vec<f32>> {
    let weights: Vec<f32> = targets
        .iter()
        .map(|&t| if t == IGNORE_INDEX { 0.0 } else { scale as f32 })
        .collect();
    weights.iter().any(|&w| w != 0.0).then_some(weights)
}

/// The logits `[rows, vocab]` of rows `start..start + rows` of `hidden`.
fn chunk_logits(hidden: &Tensor<2>, head: &Tensor<2>, start: usize, rows: usize) -> Tensor<2> {
    let chunk = hidden.clone().narrow(0, start, rows);
    matmul(chunk, Read::AsIs, head.clone(), Read::Transposed)
}

/// The loss `Σ weight · nll` of one chunk's `logits`.
fn chunk_loss(logits: Tensor<2>, targets: &[i64], weights: Vec<f32>) -> ChunkLoss {
    match is_host(&logits.device()) {
        true => {
            let mut logits = HostTensor::of(logits);
            let vocab = logits.dims()[1];
            let safe: Vec<usize> = targets.iter().map(|&t| t.max(0) as usize).collect();
            // The kernel also writes the logits' gradient over them; it is not used here.
            let loss = cpu_kernels::cross_entropy(logits.values_mut(), vocab, &safe, &weights);
            ChunkLoss::Host(loss)
        }
        false => ChunkLoss::Device(Box::new(burn_nll(logits, targets, weights).loss)),
    }
}

/// The loss summed over chunks: on the device, read once at the end (a read per chunk would
/// wait for the device each time), and on the host.
struct LossSum {
    device: Tensor<1>,
    host: f64,
}

/// One chunk's loss, where it was computed.
enum ChunkLoss {
    Device(Box<Tensor<1>>),
    Host(f64),
}

impl LossSum {
    fn new(device: &Device) -> Self {
        Self {
            device: Tensor::zeros([1], device),
            host: 0.0,
        }
    }

    fn add(mut self, loss: ChunkLoss) -> Self {
        match loss {
            ChunkLoss::Device(loss) => self.device = self.device + *loss,
            ChunkLoss::Host(loss) => self.host += loss,
        }
        self
    }

    fn total(self) -> f64 {
        self.device.into_scalar::<f64>() + self.host
    }
}

/// The loss `Σ weight · nll` of one chunk of rows and its gradient with respect to the
/// chunk's hidden states, given its `logits` `[rows, vocab]` against `head` `[vocab, width]`;
/// rows of weight `0` (unscored targets) add nothing.
fn chunk_loss_backward(
    logits: Tensor<2>,
    head: &Tensor<2>,
    targets: &[i64],
    weights: Vec<f32>,
) -> (ChunkLoss, Tensor<2>) {
    match is_host(&logits.device()) {
        true => {
            let (loss, d_hidden) = host_chunk_loss_backward(logits, head, targets, &weights);
            (ChunkLoss::Host(loss), d_hidden)
        }
        false => {
            let (loss, d_hidden) = burn_chunk_loss_backward(logits, head, targets, weights);
            (ChunkLoss::Device(Box::new(loss)), d_hidden)
        }
    }
}

/// [`chunk_loss_backward`] through the fused kernel, which turns `logits` into their gradient
/// in place.
fn host_chunk_loss_backward(
    logits: Tensor<2>,
    head: &Tensor<2>,
    targets: &[i64],
    weights: &[f32],
) -> (f64, Tensor<2>) {
    let mut logits = HostTensor::of(logits);
    let vocab = logits.dims()[1];
    let safe: Vec<usize> = targets.iter().map(|&t| t.max(0) as usize).collect();
    let loss = cpu_kernels::cross_entropy(logits.values_mut(), vocab, &safe, weights);
    let d_hidden = matmul(logits.into_tensor(), Read::AsIs, head.clone(), Read::AsIs);
    (loss, d_hidden)
}

/// [`chunk_loss_backward`] in Burn operations: the log-softmax through the row maximum, the
/// loss left on the device.
fn burn_chunk_loss_backward(
    logits: Tensor<2>,
    head: &Tensor<2>,
    targets: &[i64],
    weights: Vec<f32>,
) -> (Tensor<1>, Tensor<2>) {
    let BurnNll {
        loss,
        exp,
        sum,
        safe,
        weights,
    } = burn_nll(logits, targets, weights);
    let probs = exp * (weights.clone() / sum);
    let target_rows = embedding_rows(head.clone(), safe);
    let d_hidden = matmul(probs, Read::AsIs, head.clone(), Read::AsIs) - target_rows * weights;
    (loss, d_hidden)
}

/// The weighted loss of a chunk in Burn operations, with what its gradient needs.
struct BurnNll {
    loss: Tensor<1>,
    /// `exp(logits − row max)`.
    exp: Tensor<2>,
    /// Row sums of `exp`, `[rows, 1]`.
    sum: Tensor<2>,
    /// Targets with ignored ones replaced by 0.
    safe: Tensor<1, Int>,
    /// `[rows, 1]`.
    weights: Tensor<2>,
}

/// `Σ weight · (log Σ exp(logits) − logits[target])` through the row maximum.
fn burn_nll(logits: Tensor<2>, targets: &[i64], weights: Vec<f32>) -> BurnNll {
    let (device, rows) = (logits.device(), targets.len());
    let safe: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let safe = Tensor::<1, Int>::from_data(TensorData::new(safe, [rows]), &device);
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [rows, 1]), &device);
    let max = logits.clone().max_dim(1);
    let exp = (logits.clone() - max.clone()).exp();
    let sum = exp.clone().sum_dim(1);
    let log_norm = max + sum.clone().log();
    let target_logits = logits.gather(1, safe.clone().reshape([rows, 1]));
    let loss = ((log_norm - target_logits) * weights.clone()).sum();
    BurnNll {
        loss,
        exp,
        sum,
        safe,
        weights,
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, random};

    #[test]
    fn loss_and_gradient_agree_with_burn() {
        let (rows, vocab, width, scale) = (40, 300, 24, 0.125f32);
        // Logits over [-8, 8), as a trained head gives: a few large, most small.
        let logits = random(1, [rows, vocab]).mul_scalar(8.0);
        let head = random(2, [vocab, width]);
        let targets: Vec<i64> = (0..rows as i64)
            .map(|r| match r % 7 {
                3 => IGNORE_INDEX,
                _ => (r * 37) % vocab as i64,
            })
            .collect();
        let weights: Vec<f32> = targets
            .iter()
            .map(|&t| if t == IGNORE_INDEX { 0.0 } else { scale })
            .collect();
        let (host_loss, host_d) =
            host_chunk_loss_backward(logits.clone(), &head, &targets, &weights);
        let (loss, d) = burn_chunk_loss_backward(logits, &head, &targets, weights);
        let loss = loss.into_scalar::<f64>();
        assert!(
            (host_loss - loss).abs() <= 1e-5 * loss.abs(),
            "loss {host_loss} against {loss}"
        );
        assert_close("hidden states' gradient", host_d, d, 1e-5);
    }
}
