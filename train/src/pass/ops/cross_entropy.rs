//! The output head's cross-entropy loss with its gradient, in chunks of rows so the full
//! `[tokens, vocab]` logits never exist. On host tensors the fused kernel of `kernels::cpu`
//! turns each chunk's logits into their gradient in place; elsewhere Burn operations compute
//! the log-softmax and the loss stays on the device until the end.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use feinschliff_data::batch::IGNORE_INDEX;
use feinschliff_model::kernels::cpu as cpu_kernels;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};
use feinschliff_model::llama::Llama;
use feinschliff_model::product::{concat, row_bands};

use super::matmul::{Read, add_matmul, embedding_rows, matmul};

/// Rows of the output head computed at once: `rows × vocab` floats of logits.
const HEAD_CHUNK_ROWS: usize = 256;

/// The output head `[vocab, width]` as stored, and the dtype of its products. A head stored in
/// another dtype (bf16 on flex, which multiplies in f32) is cast a band of rows at a time, so
/// no f32 copy of it exists.
pub struct Head {
    stored: Tensor<2>,
    dtype: DType,
}

impl Head {
    /// The head of `model`, on its device without autodiff.
    pub fn of(model: &Llama) -> Self {
        Self {
            stored: model.head().inner(),
            dtype: model.head_matmul_dtype,
        }
    }

    /// The logits `[rows, vocab]` of `hidden` `[rows, width]`.
    pub fn logits(&self, hidden: &Tensor<2>) -> Tensor<2> {
        let bands = row_bands(&self.stored, self.dtype);
        let parts =
            bands.map(|(_, band)| matmul(hidden.clone(), Read::AsIs, band, Read::Transposed));
        concat(parts.collect(), 1)
    }

    /// `d_logits · head` `[rows, width]`, the gradient of [`Head::logits`].
    fn input_grad(&self, d_logits: Tensor<2>) -> Tensor<2> {
        let mut bands = row_bands(&self.stored, self.dtype);
        let (_, first) = bands.next().expect("a head has rows");
        let part = |start: usize, len: usize| d_logits.clone().narrow(1, start, len);
        let len = first.dims()[0];
        let mut sum = matmul(part(0, len), Read::AsIs, first, Read::AsIs);
        for (start, band) in bands {
            let len = band.dims()[0];
            sum = add_matmul(sum, part(start, len), Read::AsIs, band, Read::AsIs, 1.0);
        }
        sum
    }

    /// Rows `ids` of the head, in f32.
    fn rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        embedding_rows(self.stored.clone(), ids)
    }
}

/// Loss `scale · Σ nll` of the output head over `hidden` `[n, width]` and its gradient with
/// respect to `hidden`, `rows` at a time: `d_logits = scale · (softmax − onehot)` on scored
/// rows, so `d_hidden = (scale·p) W − scale · W[target]`.
pub fn head_loss_backward(
    hidden: Tensor<2>,
    head: &Head,
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
        let logits = head.logits(&hidden.clone().narrow(0, start, rows));
        let (chunk_loss, d_chunk) = chunk_loss_backward(logits, head, chunk_targets, weights);
        loss = loss.add(chunk_loss);
        d_hidden.push(d_chunk);
    }
    (loss.total(), Tensor::cat(d_hidden, 0))
}

/// Loss `Σ nll` of the output head over `hidden` `[n, width]`, without a gradient (for
/// evaluation), `rows` at a time like [`head_loss_backward`].
pub fn head_loss(hidden: Tensor<2>, head: &Head, targets: &[i64], device: &Device) -> f64 {
    let n = hidden.dims()[0];
    let mut loss = LossSum::new(device);
    for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
        let rows = HEAD_CHUNK_ROWS.min(n - start);
        let chunk_targets = &targets[start..start + rows];
        let Some(weights) = chunk_weights(chunk_targets, 1.0) else {
            continue;
        };
        let logits = head.logits(&hidden.clone().narrow(0, start, rows));
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
    head: &Head,
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
    head: &Head,
    targets: &[i64],
    weights: &[f32],
) -> (f64, Tensor<2>) {
    let mut logits = HostTensor::of(logits);
    let vocab = logits.dims()[1];
    let safe: Vec<usize> = targets.iter().map(|&t| t.max(0) as usize).collect();
    let loss = cpu_kernels::cross_entropy(logits.values_mut(), vocab, &safe, weights);
    let d_hidden = head.input_grad(logits.into_tensor());
    (loss, d_hidden)
}

/// [`chunk_loss_backward`] in Burn operations: the log-softmax through the row maximum, the
/// loss left on the device.
fn burn_chunk_loss_backward(
    logits: Tensor<2>,
    head: &Head,
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
    let target_rows = head.rows(safe);
    let d_hidden = head.input_grad(probs) - target_rows * weights;
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
        let head = Head {
            stored: random(2, [vocab, width]),
            dtype: DType::F32,
        };
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

    #[test]
    fn a_head_cast_band_by_band_gives_the_loss_of_the_head_cast_whole() {
        use feinschliff_model::product::CAST_BAND_ROWS;
        let (rows, vocab, width) = (20, CAST_BAND_ROWS + 300, 8);
        let hidden = random(1, [rows, width]);
        let stored = random(2, [vocab, width]).cast(DType::BF16);
        let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 811) % vocab as i64).collect();
        let banded = Head {
            stored: stored.clone(),
            dtype: DType::F32,
        };
        let whole = Head {
            stored: stored.cast(DType::F32),
            dtype: DType::F32,
        };
        let device = hidden.device();
        let (loss, d) = head_loss_backward(hidden.clone(), &banded, &targets, 0.5, &device);
        let (want, want_d) = head_loss_backward(hidden, &whole, &targets, 0.5, &device);
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{loss} against {want}"
        );
        assert_close("hidden states' gradient", d, want_d, 1e-5);
    }
}
