//! The reference model's log-probabilities for DPO: the frozen base with the adapters switched
//! off (as TRL does with a PEFT model: no second model in memory), scored once per example
//! before training and kept in the run directory (`reference_logps.json`), so a resumed run
//! reads the very values the first process computed. The file is keyed by the run's training
//! hash and the examples' tokens; anything else is recomputed.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use feinschliff_data::atomic_file::write_file_atomic;
use feinschliff_data::batch::make_batch;
use feinschliff_data::format::Example;
use feinschliff_model::llama::Llama;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::dpo::pass::row_log_probs;
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;
use crate::session::Session;

/// The file in the run directory.
pub const REFERENCE_FILE: &str = "reference_logps.json";

/// The reference's log-probability of each example's answer, per split, in example order.
#[derive(Debug, Clone, PartialEq)]
pub struct References {
    /// What the values belong to: the training hash and the examples' tokens.
    key: String,
    /// Training examples.
    pub train: Vec<f64>,
    /// Validation examples.
    pub valid: Vec<f64>,
}

/// [`References`] as the file keeps them: each value as its IEEE bits, so reading gives back
/// exactly the values written (a decimal round trip may be off by one unit in the last place).
#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    train: Vec<u64>,
    valid: Vec<u64>,
}

/// The references of the session's examples under `base` (a model without adapters): read
/// from the run directory when they were computed for these examples, computed otherwise.
pub fn references(
    base: &Llama,
    session: &Session,
    config: &RunConfig,
    run_dir: &RunDir,
    progress: &mut dyn Progress,
) -> Result<References, Error> {
    let (train, valid) = (&session.data.data.train, &session.data.data.valid);
    let key = key_of(config, train, valid);
    let path = run_dir.join(REFERENCE_FILE);
    if let Some(kept) = read(&path).filter(|r| r.key == key) {
        progress.note(&format!(
            "reference log-probabilities from {}",
            path.display()
        ));
        return Ok(kept);
    }
    assert!(base.adapters().is_empty(), "the reference has no adapters");
    let started = std::time::Instant::now();
    let rows = 2 * config.train.micro_batch;
    let pad_id = session.tokenizer.pad_id();
    let device = &session.plain_device;
    let score = |examples| log_probs(&base.valid(), examples, rows, pad_id, device);
    let references = References {
        key,
        train: score(train),
        valid: score(valid),
    };
    let bits = |values: &[f64]| values.iter().map(|v| v.to_bits()).collect();
    let stored = Stored {
        key: references.key.clone(),
        train: bits(&references.train),
        valid: bits(&references.valid),
    };
    let json = serde_json::to_string(&stored).expect("JSON");
    write_file_atomic(&path, json.as_bytes())?;
    progress.note(&format!(
        "reference log-probabilities of {} examples (adapters off) in {:.1} s",
        train.len() + valid.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(references)
}

/// The log-probability of each example's scored tokens under `model`, `rows` examples a batch.
pub fn log_probs(
    model: &Llama,
    examples: &[Example],
    rows: usize,
    pad_id: u32,
    device: &Device,
) -> Vec<f64> {
    examples
        .chunks(rows.max(1))
        .flat_map(|chunk| {
            let rows: Vec<Vec<&Example>> = chunk.iter().map(|e| vec![e]).collect();
            row_log_probs(model, &make_batch(&rows, None, pad_id), device)
        })
        .collect()
}

/// The references kept at `path`, if it holds readable ones.
fn read(path: &Path) -> Option<References> {
    let stored: Stored = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let values = |bits: Vec<u64>| bits.into_iter().map(f64::from_bits).collect();
    Some(References {
        key: stored.key,
        train: values(stored.train),
        valid: values(stored.valid),
    })
}

/// The key of the references of `train` and `valid` under `config`.
fn key_of(config: &RunConfig, train: &[Example], valid: &[Example]) -> String {
    let mut hash = Sha256::new();
    hash.update(config.training_hash().as_bytes());
    for example in train.iter().chain(valid) {
        hash.update((example.ids.len() as u64).to_le_bytes());
        for id in &example.ids {
            hash.update(id.to_le_bytes());
        }
        hash.update(
            example
                .trained
                .iter()
                .map(|&t| u8::from(t))
                .collect::<Vec<_>>(),
        );
    }
    hash.update((train.len() as u64).to_le_bytes());
    format!("{:x}", hash.finalize())
}
