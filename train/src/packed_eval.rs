//! Evaluation on the training pass's forward ([`crate::pass::score`]): examples sorted by
//! length and packed into rows with attention blocked between them, as many rows per batch as
//! `batch_tokens` allows. Scoring stays per example and token-weighted, so the loss is the one
//! of scoring each example on its own (`feinschliff_model::eval`), up to float rounding.

use std::time::Instant;

use burn::tensor::Device;
use feinschliff_data::batch::make_batch;
use feinschliff_data::format::Example;
use feinschliff_data::pack::pack;
use feinschliff_model::eval::EvalReport;
use feinschliff_model::llama::Llama;

use crate::pass::score::loss_sum;

/// Mean loss per scored token of `examples` (their `trained` tokens after the first), in
/// packed batches of about `batch_tokens` tokens; `on_batch(done, total, tokens)` reports
/// progress after each batch: examples done, of all, and tokens run through the model so far.
/// `device` is the device without autodiff.
pub fn evaluate_packed(
    model: &Llama,
    examples: &[Example],
    batch_tokens: usize,
    pad_id: u32,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize, usize),
) -> EvalReport {
    let start = Instant::now();
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let row_len = lengths.iter().copied().max().unwrap_or(0);
    let rows = pack(&lengths, row_len.max(1));
    let rows_per_batch = (batch_tokens / row_len.max(1)).max(1);
    let (mut nll, mut tokens, mut forwarded, mut done) = (0.0, 0, 0, 0);
    for group in rows.chunks(rows_per_batch) {
        let group: Vec<Vec<&Example>> = group
            .iter()
            .map(|row| row.iter().map(|&i| &examples[i]).collect())
            .collect();
        let batch = make_batch(&group, None, pad_id);
        nll += loss_sum(model, &batch, device);
        tokens += batch.trained_tokens;
        forwarded += batch.real_tokens;
        done += group.iter().map(Vec::len).sum::<usize>();
        on_batch(done, examples.len(), forwarded);
    }
    EvalReport {
        records: examples.len(),
        max_len: row_len,
        ..EvalReport::from_sums(nll, tokens, forwarded, start)
    }
}
