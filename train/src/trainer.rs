//! The training loop, written out by hand: LoRA adapters on a frozen base, AdamW with
//! PyTorch's semantics, the learning rate as a function of the step, gradient accumulation
//! normalised by the trained tokens of the whole window, global gradient-norm clipping, periodic
//! evaluation and checkpoints, and exact resumption.
//!
//! Data comes from the data crate ([`feinschliff_data::dataset`]): tokenized examples with
//! their trained tokens, packed into rows of `max_len` (`data.packing`) or one example per row,
//! padded per micro-batch. The rows form an endless stream, reshuffled every epoch from the
//! seed, and step `s` takes the next `micro_batch · grad_accum` rows of it, so the data cursor
//! is a function of the step.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use feinschliff_data::atomic_file::write_file_atomic;
use feinschliff_data::batch::{Batch, make_batch};
use feinschliff_data::dataset::load_dataset;
use feinschliff_data::format::Example;
use feinschliff_data::pack::{pack, packing_efficiency};
use feinschliff_data::tokenize::TextTokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;

use crate::backend::DeviceChoice;
use crate::checkpoint::{
    CheckpointState, OPTIMIZER_FILE, list_checkpoints, prune_checkpoints, write_checkpoint,
};
use crate::error::ModelError;
use crate::eval::evaluate_examples;
use crate::generate::{Sampling, generate};
use crate::io::hf::HfModel;
use crate::io::peft::load_adapter;
use crate::model::llama::Llama;
use crate::plot::write_loss_plot;
use crate::run_config::RunConfig;
use crate::schedule::learning_rate;
use crate::train_step::{StepSettings, dropout_seed, train_step};

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimizer steps done in total (including those before a resume).
    pub steps: usize,
    /// The step this process started from (0 unless resumed).
    pub resumed_from: usize,
    /// Training loss of the last step.
    pub final_train_loss: f64,
    /// Validation loss before training (fresh runs with validation data only).
    pub initial_eval_loss: Option<f64>,
    /// Validation loss after the last step.
    pub final_eval_loss: Option<f64>,
    /// Training examples.
    pub examples: usize,
    /// Training rows (packed rows, or one per example).
    pub rows: usize,
    /// Trainable (adapter) parameters.
    pub trainable_parameters: usize,
    /// Median tokens per second over the steps of this process.
    pub median_tokens_per_second: f64,
    /// The checkpoint written last.
    pub last_checkpoint: PathBuf,
    /// The signal that stopped the run early (after a checkpoint), if one did.
    pub stopped_by_signal: Option<usize>,
}

/// Where a run reports how it goes (a progress bar on a terminal, plain lines in CI).
pub trait Progress {
    /// A message: setup, evaluation, samples, stopping.
    fn note(&mut self, line: &str);
    /// Step `done` of `total` finished; `summary` has its loss, lr, grad norm and speed.
    fn step(&mut self, done: usize, total: usize, summary: &str);
}

/// Trains as `config` says, or continues the run in `config.output.run_dir` when `resume`,
/// reporting to `progress`. When `stop` becomes non-zero (a signal number), the current step is
/// finished, a checkpoint written and the run ends early.
pub fn train(
    config: &RunConfig,
    resume: bool,
    stop: &AtomicUsize,
    progress: &mut dyn Progress,
) -> Result<TrainSummary, ModelError> {
    let run_dir = config.output.run_dir.clone();
    if run_dir.exists() && !run_dir.is_dir() {
        return Err(ModelError::invalid(
            &run_dir,
            "is not a directory; output.run_dir must name a directory",
        ));
    }
    let existing = list_checkpoints(&run_dir)?;
    for (dir, reason) in &existing.damaged {
        progress.note(&format!(
            "passing over damaged checkpoint {}: {reason}",
            dir.display()
        ));
    }
    let any_checkpoint = !existing.good.is_empty() || !existing.damaged.is_empty();
    let resume_from = match (resume, existing.good.last()) {
        (false, _) if any_checkpoint => {
            return Err(ModelError::invalid(
                &run_dir,
                "already holds checkpoints of a run: pass --resume to continue it, or choose another output.run_dir",
            ));
        }
        (true, None) => {
            return Err(ModelError::invalid(
                &run_dir,
                "has no checkpoint to resume from",
            ));
        }
        (true, Some((dir, state))) => {
            if state.config_hash != config.training_hash() {
                return Err(ModelError::invalid(
                    dir,
                    "was trained with a different configuration (model, lora, data or optimisation); resume needs the same",
                ));
            }
            Some((dir.clone(), state.clone()))
        }
        (false, _) => None,
    };

    let choice: DeviceChoice = config.model.device.parse().map_err(ModelError::Usage)?;
    let (storage_dtype, matmul_dtype) = config
        .model
        .base_dtypes(choice)
        .map_err(ModelError::Usage)?;
    let device = choice.device().autodiff();
    let train_cfg = &config.train;
    let spec = config.lora_spec();
    let tokenizer = TextTokenizer::from_model_dir(&config.model.path)?;
    let loaded = HfModel::load(&config.model.path, &device)?;
    let loaded_eos = loaded.eos_token_ids.clone();
    if loaded_eos.is_empty() {
        return Err(ModelError::invalid(
            &config.model.path,
            "the model names no EOS token (config.json / generation_config.json)",
        ));
    }
    let data = load_dataset(&config.data, &config.model.path)?;
    let (train_stats, valid_stats) = (&data.data.train_stats, &data.data.valid_stats);
    progress.note(&format!(
        "data: {} training examples from {} records ({} tokens, {} trained; {} truncated, {} dropped), {} validation examples; {} in {:.2} s",
        train_stats.examples,
        train_stats.records,
        train_stats.tokens,
        train_stats.trained_tokens,
        train_stats.truncated,
        train_stats.dropped,
        valid_stats.examples,
        match data.from_cache {
            true => "loaded from the token cache",
            false => "tokenized",
        },
        data.seconds
    ));
    let examples = &data.data.train;
    let mut valid_examples = data.data.valid.clone();
    if train_cfg.eval_records > 0 {
        valid_examples.truncate(train_cfg.eval_records);
    }
    let pad_id = tokenizer.pad_id();
    let rows = training_rows(examples, config, progress);
    // Everything the run reads has loaded: only now is the run directory created and locked,
    // so bad input leaves nothing behind.
    std::fs::create_dir_all(&run_dir).map_err(|e| ModelError::io(&run_dir, e))?;
    let _lock = lock_run_dir(&run_dir)?;
    let config_path = run_dir.join("config.toml");
    write_file_atomic(&config_path, config.to_toml().as_bytes())?;
    let per_step = train_cfg.micro_batch * train_cfg.grad_accum;
    let total_steps = match train_cfg.max_steps {
        0 => (train_cfg.epochs * rows.len()).div_ceil(per_step),
        n => n,
    };

    let mut model = loaded.model;
    model.set_base_dtypes(storage_dtype, matmul_dtype);
    let optim_config = adamw(config);
    let (mut optim, start_step) = match &resume_from {
        Some((dir, state)) => {
            load_adapter(&mut model, dir, &device)?;
            let path = dir.join(OPTIMIZER_FILE);
            let optim = optim_config.init().load(&path).map_err(|e| {
                ModelError::invalid(&path, format!("cannot read optimizer state: {e}"))
            })?;
            progress.note(&format!(
                "resuming {} at step {}",
                run_dir.display(),
                state.step
            ));
            (optim, state.step)
        }
        None => {
            device.seed(train_cfg.seed);
            model.attach_lora(&spec, &device);
            (optim_config.init(), 0)
        }
    };
    let trainable: Vec<ParamId> = model
        .adapters()
        .iter()
        .flat_map(|(_, a)| [a.lora_a.id, a.lora_b.id])
        .collect();
    let trainable_parameters: usize = model
        .adapters()
        .iter()
        .map(|(_, a)| {
            a.lora_a.val().dims().iter().product::<usize>()
                + a.lora_b.val().dims().iter().product::<usize>()
        })
        .sum();
    progress.note(&format!(
        "{} rows, {} steps, {} adapters ({} trainable parameters)",
        rows.len(),
        total_steps,
        trainable.len() / 2,
        trainable_parameters
    ));
    if start_step >= total_steps {
        return Err(ModelError::Usage(format!(
            "the run is already at step {start_step} of {total_steps}; raise train.max_steps to continue"
        )));
    }

    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = metrics_file(&metrics_path, start_step)?;
    let inner_device = device.clone().inner();
    let evaluate_at =
        |model: &Llama, step: usize, metrics: &mut std::fs::File, progress: &mut dyn Progress| {
            evaluate_now(
                model,
                &tokenizer,
                &valid_examples,
                pad_id,
                config,
                &loaded_eos,
                &inner_device,
                step,
                metrics,
                &metrics_path,
                progress,
            )
        };
    let wants_eval = !valid_examples.is_empty() || !train_cfg.generate_prompts.is_empty();
    let initial_eval_loss = match start_step == 0 && wants_eval {
        true => evaluate_at(&model, 0, &mut metrics, progress)?,
        false => None,
    };
    let base_model = config.model.path.display().to_string();
    let hash = config.training_hash();
    let started = Instant::now();
    let mut speeds = Vec::new();
    let mut last = (0.0, None, run_dir.clone());
    let (mut stopped_by_signal, mut steps_done) = (None, total_steps);
    for step in start_step..total_steps {
        let step_started = Instant::now();
        let lr = learning_rate(
            train_cfg.schedule,
            train_cfg.lr,
            train_cfg.warmup_steps,
            total_steps,
            step,
        );
        let batches = step_batches(&rows, examples, config, step, pad_id);
        let real_tokens: usize = batches.iter().map(|b| b.real_tokens).sum();
        let window_tokens: usize = batches.iter().map(|b| b.trained_tokens).sum();
        let settings = StepSettings {
            lr,
            max_grad_norm: train_cfg.max_grad_norm,
            dropout_seed: dropout_seed(train_cfg.seed, step),
        };
        let (updated, report) = train_step(model, &mut optim, &batches, settings, &inner_device);
        model = updated;
        let (nll, grad_norm) = (report.loss, report.grad_norm);
        if !nll.is_finite() {
            return Err(ModelError::Usage(format!(
                "loss is {nll} at step {}: training stopped; the last good checkpoint is kept",
                step + 1
            )));
        }
        let seconds = step_started.elapsed().as_secs_f64();
        let tokens_per_second = real_tokens as f64 / seconds;
        speeds.push(tokens_per_second);
        let done = step + 1;
        let line = json!({
            "step": done, "loss": nll, "lr": lr, "grad_norm": grad_norm, "tokens": window_tokens,
            "tokens_per_second": tokens_per_second, "elapsed_s": started.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}").map_err(|e| ModelError::io(&metrics_path, e))?;
        progress.step(
            done,
            total_steps,
            &format!(
                "loss {nll:.4}  lr {lr:.3e}  grad_norm {grad_norm:.3}  {tokens_per_second:.0} tok/s"
            ),
        );

        let signal = stop.load(Ordering::SeqCst);
        let is_last = done == total_steps || signal != 0;
        let eval_now = wants_eval
            && (is_last || (train_cfg.eval_every > 0 && done % train_cfg.eval_every == 0));
        let eval_loss = match eval_now {
            true => evaluate_at(&model, done, &mut metrics, progress)?,
            false => None,
        };
        if is_last || (train_cfg.save_every > 0 && done % train_cfg.save_every == 0) {
            let state = CheckpointState {
                step: done,
                seed: train_cfg.seed,
                config_hash: hash.clone(),
                train_loss: nll,
                eval_loss,
            };
            let dir = write_checkpoint(&run_dir, &model, &spec, &base_model, &optim, &state)?;
            prune_checkpoints(&run_dir, train_cfg.keep_last)?;
            last.2 = dir;
        }
        last.0 = nll;
        last.1 = eval_loss;
        if signal != 0 {
            progress.note(&format!(
                "stopped by signal {signal} after step {done}; checkpoint written"
            ));
            stopped_by_signal = Some(signal);
            steps_done = done;
            break;
        }
    }
    speeds.sort_by(f64::total_cmp);
    drop(metrics);
    plot_metrics(&metrics_path, &run_dir.join("loss.png"))?;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        steps: steps_done,
        resumed_from: start_step,
        final_train_loss: last.0,
        initial_eval_loss,
        final_eval_loss: last.1,
        examples: examples.len(),
        rows: rows.len(),
        trainable_parameters,
        median_tokens_per_second: speeds[speeds.len() / 2],
        last_checkpoint: last.2,
        stopped_by_signal,
    };
    let summary_path = run_dir.join("summary.json");
    let summary_json = serde_json::to_string_pretty(&summary).expect("JSON") + "\n";
    write_file_atomic(&summary_path, summary_json.as_bytes())?;
    Ok(summary)
}

/// Takes the run directory's lock (`RUN_DIR/.lock`) for as long as the returned file lives, so
/// that two runs never write into one directory; the operating system releases it when the
/// process ends, however it ends.
fn lock_run_dir(run_dir: &Path) -> Result<std::fs::File, ModelError> {
    let path = run_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ModelError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ModelError::invalid(
            run_dir,
            "is in use by another training run (its lock file .lock is held); wait for it or choose another output.run_dir",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(ModelError::io(&path, e)),
    }
}

/// Draws `loss.png` from the step and eval lines of `metrics.jsonl`.
fn plot_metrics(metrics: &Path, png: &Path) -> Result<(), ModelError> {
    let text = std::fs::read_to_string(metrics).map_err(|e| ModelError::io(metrics, e))?;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = value["step"].as_f64() else {
            continue;
        };
        if let Some(loss) = value["loss"].as_f64() {
            train.push((step, loss));
        }
        if let Some(loss) = value["eval_loss"].as_f64() {
            eval.push((step, loss));
        }
    }
    write_loss_plot(png, &train, &eval)
}

/// Opens `metrics.jsonl` for appending, first dropping lines of steps after `keep_until` (left
/// by a run that stopped after its last checkpoint).
fn metrics_file(path: &Path, keep_until: usize) -> Result<std::fs::File, ModelError> {
    let kept: String = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|step| step as usize <= keep_until)
            })
            .map(|line| format!("{line}\n"))
            .collect(),
        Err(_) => String::new(),
    };
    write_file_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| ModelError::io(path, e))
}

/// The rows training draws from: packed rows of `data.max_len` tokens (`data.packing`), or one
/// example per row; each row lists its examples' indices.
pub fn training_rows(
    examples: &[Example],
    config: &RunConfig,
    progress: &mut dyn Progress,
) -> Vec<Vec<usize>> {
    let max_len = config.data.max_len;
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
    let train_cfg = &config.train;
    let per_step = train_cfg.micro_batch * train_cfg.grad_accum;
    (step * per_step..(step + 1) * per_step)
        .map(|k| stream_row(rows, train_cfg.seed, k))
        .collect::<Vec<_>>()
        .chunks(train_cfg.micro_batch)
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

/// AdamW as `[train]` configures it (PyTorch's semantics; weight decay explicit).
pub fn adamw(config: &RunConfig) -> AdamWConfig {
    let train_cfg = &config.train;
    AdamWConfig::new()
        .with_beta_1(train_cfg.beta1 as f32)
        .with_beta_2(train_cfg.beta2 as f32)
        .with_epsilon(train_cfg.eps as f32)
        .with_weight_decay(train_cfg.weight_decay as f32)
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

/// Scores the validation texts and answers the configured prompts (greedy) with the model as it
/// is at `step`; writes both to `metrics` and the log. Returns the validation loss, if any.
#[allow(clippy::too_many_arguments)]
fn evaluate_now(
    model: &Llama,
    tokenizer: &TextTokenizer,
    valid: &[Example],
    pad_id: u32,
    config: &RunConfig,
    eos_ids: &[u32],
    device: &Device,
    step: usize,
    metrics: &mut std::fs::File,
    metrics_path: &Path,
    progress: &mut dyn Progress,
) -> Result<Option<f64>, ModelError> {
    let inference = model.valid();
    let mut write = |line: serde_json::Value| {
        writeln!(metrics, "{line}").map_err(|e| ModelError::io(metrics_path, e))
    };
    let loss = match valid.is_empty() {
        true => None,
        false => {
            let report =
                evaluate_examples(&inference, valid, config.train.micro_batch, pad_id, device);
            write(
                json!({ "step": step, "eval_loss": report.loss, "eval_perplexity": report.perplexity }),
            )?;
            progress.note(&format!(
                "eval at step {step}: loss {:.4}  perplexity {:.3}",
                report.loss, report.perplexity
            ));
            Some(report.loss)
        }
    };
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    for prompt in &config.train.generate_prompts {
        let ids = tokenizer.encode(prompt, true)?;
        let max_new = config.train.generate_max_new_tokens;
        let new = generate(&inference, &ids, eos_ids, max_new, greedy, device, |_| {
            Ok(())
        })?;
        let text = tokenizer.decode(&new, true)?;
        write(json!({ "step": step, "prompt": prompt, "generation": text }))?;
        progress.note(&format!("sample at step {step}: {prompt:?} -> {text:?}"));
    }
    Ok(loss)
}
