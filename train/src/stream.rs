//! The rows a run trains on, as an endless stream: tokenized examples packed into rows of
//! `data.max_len` (`data.packing`), one example per row, or preference pairs of two rows,
//! reshuffled every epoch from the seed.
//! Step `s` takes the next `micro_batch · grad_accum` rows of the stream, so the data cursor is
//! a function of the step and a resumed run sees the same batches.

use feinschliff_data::batch::{Batch, make_batch};
use feinschliff_data::config::Format;
use feinschliff_data::format::Example;
use feinschliff_data::pack::{pack, packing_efficiency};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::progress::Progress;
use crate::run_config::RunConfig;

/// The rows training draws from; each row lists its examples' indices.
pub fn training_rows(
    examples: &[Example],
    config: &RunConfig,
    progress: &mut dyn Progress,
) -> Vec<Vec<usize>> {
    let max_len = config.data.max_len;
    if config.data.format == Format::Preference {
        // A pair (chosen, rejected) is one unit of the stream; each is a row of its batch.
        return (0..examples.len() / 2)
            .map(|i| vec![2 * i, 2 * i + 1])
            .collect();
    }
    match config.data.packing {
        true => {
            let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
            let rows = pack(&lengths, max_len);
            progress.note(&format!(
                "packed into {} rows of {max_len} tokens ({:.1} % filled)",
                rows.len(),
                100.0 * packing_efficiency(&lengths, rows.len(), max_len)
            ));
            rows
        }
        false => (0..examples.len()).map(|i| vec![i]).collect(),
    }
}

/// The micro-batches of optimizer step `step` (0-based): the next `micro_batch · grad_accum`
/// rows of the stream, `micro_batch` per batch.
pub fn step_batches(
    rows: &[Vec<usize>],
    examples: &[Example],
    config: &RunConfig,
    step: usize,
    pad_id: u32,
) -> Vec<Batch> {
    micro_batches(&step_rows(rows, config, step), examples, config, pad_id)
}

/// The batches of `micro` (per micro-batch, the example indices of each row, as
/// [`step_rows`] gives them).
pub fn micro_batches(
    micro: &[Vec<Vec<usize>>],
    examples: &[Example],
    config: &RunConfig,
    pad_id: u32,
) -> Vec<Batch> {
    micro
        .iter()
        .map(|micro| {
            let rows: Vec<Vec<&Example>> = micro
                .iter()
                .map(|row| row.iter().map(|&i| &examples[i]).collect())
                .collect();
            make_batch(
                &rows,
                config.data.packing.then_some(config.data.max_len),
                pad_id,
            )
        })
        .collect()
}

/// The example indices of each batch row of each micro-batch of step `step`: a unit of the
/// stream is a row, or, for preference data, a pair that fills two rows (chosen, rejected).
pub fn step_rows(rows: &[Vec<usize>], config: &RunConfig, step: usize) -> Vec<Vec<Vec<usize>>> {
    let train_cfg = &config.train;
    let per_step = train_cfg.micro_batch * train_cfg.grad_accum;
    let pairs = config.data.format == Format::Preference;
    (step * per_step..(step + 1) * per_step)
        .map(|k| stream_row(rows, train_cfg.seed, k))
        .collect::<Vec<_>>()
        .chunks(train_cfg.micro_batch)
        .map(|micro| match pairs {
            true => micro
                .iter()
                .flat_map(|pair| pair.iter().map(|&i| vec![i]))
                .collect(),
            false => micro.iter().map(|row| row.to_vec()).collect(),
        })
        .collect()
}

/// Row `k` of the endless stream: epoch `k / n` visits all `n` rows in an order shuffled from
/// the seed and the epoch.
fn stream_row(rows: &[Vec<usize>], seed: u64, k: usize) -> &Vec<usize> {
    let n = rows.len();
    let epoch = (k / n) as u64;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed.wrapping_add(epoch.wrapping_mul(0x2545_F491_4F6C_DD1D)),
    ));
    &rows[order[k % n]]
}
