//! What a run trains with, loaded and checked before anything is written: the device, the base
//! model in its configured dtypes, the tokenizer, the examples of both splits and the rows of
//! the training stream. `train` and `bench` start the same way, from [`Session::prepare`].

use std::collections::BTreeMap;

use burn::tensor::{DType, Device};
use feinschliff_data::batch::Batch;
use feinschliff_data::dataset::{Loaded, load_dataset};
use feinschliff_data::format::Example;
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::config::LlamaConfig;
use feinschliff_model::io::gguf::base::ModelFiles;
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::linear::BaseStorage;
use feinschliff_model::llama::Llama;

use crate::Error;
use crate::base_products::{Recorded, auto_products};
use crate::progress::Progress;
use crate::run_config::{DtypeChoice, RunConfig, dtype_name};
use crate::stream::{micro_batches, step_batches, step_rows, training_rows};

/// A run's model, data and devices.
pub struct Session {
    /// The `--device` the run computes on.
    pub choice: DeviceChoice,
    /// That device with autodiff (where the adapters live).
    pub device: Device,
    /// That device without autodiff (where the training pass and evaluation compute).
    pub plain_device: Device,
    /// The dtype the frozen base is stored in.
    pub storage_dtype: DType,
    /// The dtype the frozen base's products are computed in.
    pub matmul_dtype: DType,
    /// The model's EOS ids (generation stops at any).
    pub eos_ids: Vec<u32>,
    /// The model's tokenizer.
    pub tokenizer: TextTokenizer,
    /// The examples of both splits and how they were obtained.
    pub data: Loaded,
    /// The rows of the training stream (example indices).
    pub rows: Vec<Vec<usize>>,
}

impl Session {
    /// Loads the model, tokenizer and data that `config` names and reports the data's counts;
    /// returns the session and the base model (in its configured dtypes, no adapters yet).
    /// `recorded` is what a resumed run's checkpoint says about its products (what `auto`
    /// chose at its start).
    pub fn prepare(
        config: &RunConfig,
        recorded: Recorded,
        progress: &mut dyn Progress,
    ) -> Result<(Self, Llama), Error> {
        let choice: DeviceChoice = config.model.device.parse().map_err(Error::Usage)?;
        let device = choice.device().autodiff();
        // The tokenizer and the data first: a missing data file fails before a long load.
        let files = ModelFiles::of(&config.model.path)?;
        let tokenizer = TextTokenizer::from_model_dir(files.dir())?;
        let data = load_dataset(&config.data, files.dir())?;
        let (storage_dtype, matmul_dtype, products_note) =
            base_dtypes(config, choice, &files, recorded)?;
        let storage = BaseStorage {
            dtype: storage_dtype,
            quant: config.model.base_quant,
        };
        let loaded = HfModel::load_as(&config.model.path, storage, &device)?;
        loaded.check_tokenizer(&tokenizer)?;
        if loaded.eos_token_ids.is_empty() {
            return Err(Error::invalid(
                &config.model.path,
                "the model names no EOS token (config.json / generation_config.json)",
            ));
        }
        loaded.check_examples(&data)?;
        let mut model = loaded.model;
        model.set_base_dtypes(storage_dtype, matmul_dtype);
        if let Some(note) = products_note {
            progress.note(&note);
        }
        if let Some(note) = quantized_note(&model) {
            progress.note(&note);
        }
        progress.note(&data_note(&data));
        let rows = training_rows(&data.data.train, config, progress);
        if rows.is_empty() {
            return Err(Error::config(
                "data.train",
                "gives no training examples (every record was dropped or empty)",
            ));
        }
        let session = Self {
            choice,
            plain_device: device.clone().inner(),
            device,
            storage_dtype,
            matmul_dtype,
            eos_ids: loaded.eos_token_ids,
            tokenizer,
            data,
            rows,
        };
        Ok((session, model))
    }

    /// The training examples.
    pub fn examples(&self) -> &[Example] {
        &self.data.data.train
    }

    /// The micro-batches of optimizer step `step` (0-based).
    pub fn batches(&self, config: &RunConfig, step: usize) -> Vec<Batch> {
        let pad_id = self.tokenizer.pad_id();
        step_batches(&self.rows, self.examples(), config, step, pad_id)
    }

    /// The example indices of each row of each micro-batch of step `step` ([`step_rows`]).
    pub fn step_rows(&self, config: &RunConfig, step: usize) -> Vec<Vec<Vec<usize>>> {
        step_rows(&self.rows, config, step)
    }

    /// The micro-batches of the rows `rows` ([`Session::step_rows`]).
    pub fn batches_of(&self, config: &RunConfig, rows: &[Vec<Vec<usize>>]) -> Vec<Batch> {
        micro_batches(rows, self.examples(), config, self.tokenizer.pad_id())
    }

    /// Optimizer steps of the whole run: `train.max_steps`, or enough for `train.epochs`.
    pub fn total_steps(&self, config: &RunConfig) -> usize {
        let train_cfg = &config.train;
        let per_step = train_cfg.micro_batch * train_cfg.grad_accum;
        match train_cfg.max_steps {
            0 => (train_cfg.epochs * self.rows.len()).div_ceil(per_step),
            n => n,
        }
    }
}

/// The dtypes the frozen base is stored and multiplied in, and for an `auto` product dtype,
/// decided here (`base_products`, a probe at the model's shape), the line that says why.
fn base_dtypes(
    config: &RunConfig,
    choice: DeviceChoice,
    files: &ModelFiles,
    recorded: Recorded,
) -> Result<(DType, DType, Option<String>), Error> {
    let (auto, note) = match config.model.matmul_dtype {
        DtypeChoice::Auto => {
            let model = LlamaConfig::from_file(&files.dir().join("config.json"))?;
            let auto = auto_products(config, choice, &model, recorded);
            let name = dtype_name(auto.dtype);
            (
                auto.dtype,
                Some(format!("base products: {name} ({})", auto.reason)),
            )
        }
        _ => (DType::F32, None),
    };
    let (storage, products) = config.model.base_dtypes(choice, auto)?;
    Ok((storage, products, note))
}

/// The line that says which projections are kept quantized, in which block types, and
/// their size; `None` when none is.
fn quantized_note(model: &Llama) -> Option<String> {
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut dense = 0;
    for (_, proj) in model.projections() {
        match &proj.quantized {
            Some(matrix) => {
                let entry = by_type.entry(matrix.format().name()).or_default();
                entry.0 += 1;
                entry.1 += matrix.data().len();
            }
            None => dense += 1,
        }
    }
    if by_type.is_empty() {
        return None;
    }
    let types: Vec<String> = by_type
        .iter()
        .map(|(name, (count, bytes))| {
            format!(
                "{count} {name} ({:.1} MiB)",
                *bytes as f64 / (1 << 20) as f64
            )
        })
        .collect();
    Some(format!(
        "base: projections quantized: {}; {dense} dense (rows that fit no block)",
        types.join(", ")
    ))
}

/// The line that says what the data gave.
fn data_note(data: &Loaded) -> String {
    let (train, valid) = (&data.data.train_stats, &data.data.valid_stats);
    format!(
        "data: {} training examples from {} records ({} tokens, {} trained; {} truncated, {} dropped), {} validation examples; {} in {:.2} s",
        train.examples,
        train.records,
        train.tokens,
        train.trained_tokens,
        train.truncated,
        train.dropped,
        valid.examples,
        match data.from_cache {
            true => "loaded from the token cache",
            false => "tokenized",
        },
        data.seconds
    )
}
