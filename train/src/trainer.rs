//! The training run, as a recipe: lock the run directory, decide where to start, prepare the
//! session, attach (or restore) the adapters and their optimizer, evaluate, run the steps with
//! evaluation and checkpoints along the way, and finish with the plot and the summary.
//!
//! Each step trains LoRA adapters on a frozen base with AdamW (PyTorch's semantics), the
//! learning rate a function of the step, gradient accumulation normalised by the trained tokens
//! of the whole window and global gradient-norm clipping ([`crate::train_step`]). Because the
//! data cursor, the dropout masks and the learning rate are functions of the step, a resumed
//! run is bit-identical to one that never stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use feinschliff_data::batch::Batch;
use feinschliff_model::io::peft::load_adapter;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::LoraSpec;
use serde_json::json;

use crate::Error;
use crate::base_products::Recorded;
use crate::checkpoint::{CheckpointState, OPTIMIZER_FILE, prune_checkpoints, write_checkpoint};
use crate::dpo::loss::PreferenceMetrics;
use crate::dpo::reference::{References, references};
use crate::dpo::step::{PairBatch, dpo_step};
use crate::evaluator::Evaluator;
use crate::optim::adamw;
use crate::progress::Progress;
use crate::resume::{ResumePoint, resume_point};
use crate::run_config::{RunConfig, dtype_name};
use crate::run_dir::{MetricsLog, RunDir};
use crate::schedule::learning_rate;
use crate::session::Session;
use crate::train_step::{StepReport, StepSettings, dropout_seed, train_step};

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

/// Trains as `config` says, or continues the run in `config.output.run_dir` when `resume`,
/// reporting to `progress`. When `stop` becomes non-zero (a signal number), the current step is
/// finished, a checkpoint written and the run ends early.
pub fn train(
    config: &RunConfig,
    resume: bool,
    stop: &AtomicUsize,
    progress: &mut dyn Progress,
) -> Result<TrainSummary, Error> {
    let run_dir = RunDir::lock(&config.output.run_dir)?;
    let result = train_locked(config, resume, stop, progress, &run_dir);
    if result.is_err() {
        run_dir.remove_if_unused();
    }
    result
}

/// [`train`] with the run directory locked: every decision about it is taken under the lock.
fn train_locked(
    config: &RunConfig,
    resume: bool,
    stop: &AtomicUsize,
    progress: &mut dyn Progress,
    run_dir: &RunDir,
) -> Result<TrainSummary, Error> {
    let resume_from = resume_point(run_dir, resume, config, progress)?;
    let recorded = match &resume_from {
        None => Recorded::Fresh,
        Some(point) => point
            .state
            .base_products()
            .map_or(Recorded::BeforeTheProbe, Recorded::Dtype),
    };
    let (session, base) = Session::prepare(config, recorded, progress)?;
    let total_steps = session.total_steps(config);
    let start_step = resume_from.as_ref().map_or(0, |point| point.state.step);
    if start_step >= total_steps {
        return Err(Error::Usage(format!(
            "the run is already at step {start_step} of {total_steps}; raise train.max_steps to continue"
        )));
    }
    let references = match config.train.dpo() {
        Some(_) => Some(references(&base, &session, config, run_dir, progress)?),
        None => None,
    };
    let trainee = Trainee::start(base, config, &session, resume_from.as_ref(), progress)?;
    progress.note(&format!(
        "{} {}, {total_steps} steps, {} adapters ({} trainable parameters)",
        session.rows.len(),
        match references {
            Some(_) => "pairs",
            None => "rows",
        },
        trainee.adapters,
        trainee.parameters
    ));
    run_dir.write_config(&config.to_toml())?;
    let mut log = MetricsLog::open(run_dir, trainee.start_step)?;
    let evaluator = Evaluator::new(&session, config, references.as_ref());
    let initial_eval_loss = match trainee.start_step == 0 && evaluator.wanted() {
        true => evaluator.run(&trainee.model, 0, &mut log, progress)?,
        false => None,
    };
    let steps = StepLoop {
        config,
        session: &session,
        evaluator: &evaluator,
        run_dir,
        spec: config.lora_spec(),
        total_steps,
        references: references.as_ref(),
    };
    let outcome = steps.run(trainee, &mut log, stop, progress)?;
    drop(log);
    finish(run_dir, &session, initial_eval_loss, outcome)
}

/// Draws the loss plot and writes the summary of a run that ended with `outcome`.
fn finish(
    run_dir: &RunDir,
    session: &Session,
    initial_eval_loss: Option<f64>,
    outcome: Outcome,
) -> Result<TrainSummary, Error> {
    run_dir.plot_losses()?;
    let summary = TrainSummary {
        run_dir: run_dir.path.clone(),
        steps: outcome.steps_done,
        resumed_from: outcome.resumed_from,
        final_train_loss: outcome.last_loss,
        initial_eval_loss,
        final_eval_loss: outcome.last_eval_loss,
        examples: session.examples().len(),
        rows: session.rows.len(),
        trainable_parameters: outcome.trainable_parameters,
        median_tokens_per_second: outcome.median_speed,
        last_checkpoint: outcome.last_checkpoint,
        stopped_by_signal: outcome.stopped_by_signal,
    };
    run_dir.write_summary(&(serde_json::to_string_pretty(&summary).expect("JSON") + "\n"))?;
    Ok(summary)
}

/// The model being trained, its optimizer, and where it starts.
struct Trainee {
    model: Llama,
    optim: ModuleOptimizer,
    start_step: usize,
    /// Adapters attached.
    adapters: usize,
    /// Their trainable parameters.
    parameters: usize,
}

impl Trainee {
    /// Fresh adapters (seeded), or the adapters and optimizer state of `resume_from`.
    fn start(
        mut model: Llama,
        config: &RunConfig,
        session: &Session,
        resume_from: Option<&ResumePoint>,
        progress: &mut dyn Progress,
    ) -> Result<Self, Error> {
        let device = &session.device;
        let optim_config = adamw(config);
        let (optim, start_step) = match resume_from {
            Some(point) => {
                load_adapter(&mut model, &point.dir, device)?;
                let path = point.dir.join(OPTIMIZER_FILE);
                let optim = optim_config.init().load(&path).map_err(|e| {
                    Error::checkpoint(&path, format!("cannot read optimizer state: {e}"))
                })?;
                let (dir, step) = (config.output.run_dir.display(), point.state.step);
                progress.note(&format!("resuming {dir} at step {step}"));
                (optim, step)
            }
            None => {
                device.seed(config.train.seed);
                model.attach_lora(&config.lora_spec(), device);
                (optim_config.init(), 0)
            }
        };
        let adapters = model.adapters();
        let parameters = adapters.iter().map(|(_, a)| a.num_params()).sum();
        let adapters = adapters.len();
        Ok(Self {
            adapters,
            parameters,
            model,
            optim,
            start_step,
        })
    }
}

/// The fixed surroundings of the step loop.
struct StepLoop<'a> {
    config: &'a RunConfig,
    session: &'a Session,
    evaluator: &'a Evaluator<'a>,
    run_dir: &'a RunDir,
    spec: LoraSpec,
    total_steps: usize,
    /// The reference's log-probabilities, for DPO.
    references: Option<&'a References>,
}

/// What the step loop ended with.
struct Outcome {
    resumed_from: usize,
    trainable_parameters: usize,
    steps_done: usize,
    last_loss: f64,
    last_eval_loss: Option<f64>,
    last_checkpoint: PathBuf,
    stopped_by_signal: Option<usize>,
    median_speed: f64,
}

/// One finished optimizer step.
struct StepDone {
    /// Steps done so far (1-based).
    done: usize,
    loss: f64,
    tokens_per_second: f64,
}

impl StepLoop<'_> {
    /// Runs the steps from the trainee's start to the end, or until `stop` is set.
    fn run(
        &self,
        trainee: Trainee,
        log: &mut MetricsLog,
        stop: &AtomicUsize,
        progress: &mut dyn Progress,
    ) -> Result<Outcome, Error> {
        let Trainee {
            mut model,
            mut optim,
            start_step,
            parameters,
            ..
        } = trainee;
        let started = Instant::now();
        let mut speeds = Vec::new();
        let mut outcome = Outcome {
            resumed_from: start_step,
            trainable_parameters: parameters,
            steps_done: self.total_steps,
            last_loss: 0.0,
            last_eval_loss: None,
            last_checkpoint: self.run_dir.path.clone(),
            stopped_by_signal: None,
            median_speed: 0.0,
        };
        for step in start_step..self.total_steps {
            let (updated, step) = self.step(model, &mut optim, step, started, log, progress)?;
            model = updated;
            speeds.push(step.tokens_per_second);
            let signal = stop.load(Ordering::SeqCst);
            let is_last = step.done == self.total_steps || signal != 0;
            let eval_every = self.config.train.eval_every;
            let eval_loss = match self.evaluator.wanted() && due(step.done, eval_every, is_last) {
                true => self.evaluator.run(&model, step.done, log, progress)?,
                false => None,
            };
            if due(step.done, self.config.train.save_every, is_last) {
                outcome.last_checkpoint = self.checkpoint(&model, &optim, &step, eval_loss)?;
            }
            (outcome.last_loss, outcome.last_eval_loss) = (step.loss, eval_loss);
            if signal != 0 {
                progress.note(&format!(
                    "stopped by signal {signal} after step {}; checkpoint written",
                    step.done
                ));
                (outcome.stopped_by_signal, outcome.steps_done) = (Some(signal), step.done);
                break;
            }
        }
        speeds.sort_by(f64::total_cmp);
        outcome.median_speed = speeds[speeds.len() / 2];
        Ok(outcome)
    }

    /// Optimizer step `step` (0-based): trains, writes the metrics line and reports progress.
    fn step(
        &self,
        model: Llama,
        optim: &mut ModuleOptimizer,
        step: usize,
        started: Instant,
        log: &mut MetricsLog,
        progress: &mut dyn Progress,
    ) -> Result<(Llama, StepDone), Error> {
        let step_started = Instant::now();
        let train_cfg = &self.config.train;
        let lr = learning_rate(
            train_cfg.schedule,
            train_cfg.lr,
            train_cfg.warmup_steps,
            self.total_steps,
            step,
        );
        let rows = self.session.step_rows(self.config, step);
        let batches = self.session.batches_of(self.config, &rows);
        let real_tokens: usize = batches.iter().map(|b| b.real_tokens).sum();
        let window_tokens: usize = batches.iter().map(|b| b.trained_tokens).sum();
        let settings = StepSettings {
            lr,
            max_grad_norm: train_cfg.max_grad_norm,
            dropout_seed: dropout_seed(train_cfg.seed, step),
            mlp: train_cfg.mlp_activations(),
        };
        let (model, report, preference) = self.train_window(model, optim, &rows, batches, settings);
        let (loss, grad_norm, done) = (report.loss, report.grad_norm, step + 1);
        if !loss.is_finite() {
            return Err(Error::Usage(format!(
                "loss is {loss} at step {done}: training stopped; the last good checkpoint is kept"
            )));
        }
        let tokens_per_second = real_tokens as f64 / step_started.elapsed().as_secs_f64();
        let mut line = json!({
            "step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": window_tokens,
            "tokens_per_second": tokens_per_second, "elapsed_s": started.elapsed().as_secs_f64(),
        });
        if let Some(metrics) = &preference {
            metrics.write_into(&mut line, "");
        }
        log.write(line)?;
        progress.step(
            done,
            self.total_steps,
            &format!(
                "loss {loss:.4}  lr {lr:.3e}  grad_norm {grad_norm:.3}  {tokens_per_second:.0} tok/s"
            ),
        );
        let done = StepDone {
            done,
            loss,
            tokens_per_second,
        };
        Ok((model, done))
    }

    /// Trains on the micro-batches `batches` (of the example rows `rows`) with the run's
    /// objective; DPO also returns the pairs' metrics.
    fn train_window(
        &self,
        model: Llama,
        optim: &mut ModuleOptimizer,
        rows: &[Vec<Vec<usize>>],
        batches: Vec<Batch>,
        settings: StepSettings,
    ) -> (Llama, StepReport, Option<PreferenceMetrics>) {
        let device = &self.session.plain_device;
        let (Some(dpo), Some(references)) = (self.config.train.dpo(), self.references) else {
            let (model, report) = train_step(model, optim, &batches, settings, device);
            return (model, report, None);
        };
        let batches: Vec<PairBatch> = batches
            .into_iter()
            .zip(rows)
            .map(|(batch, rows)| PairBatch {
                reference: rows.iter().map(|r| references.train[r[0]]).collect(),
                batch,
            })
            .collect();
        let (model, report, metrics) = dpo_step(model, optim, &batches, dpo, settings, device);
        (model, report, Some(metrics))
    }

    /// Writes the checkpoint of `step` and prunes old ones; returns its directory.
    fn checkpoint(
        &self,
        model: &Llama,
        optim: &ModuleOptimizer,
        step: &StepDone,
        eval_loss: Option<f64>,
    ) -> Result<PathBuf, Error> {
        let state = CheckpointState {
            step: step.done,
            seed: self.config.train.seed,
            config_hash: self.config.training_hash(),
            train_loss: step.loss,
            eval_loss,
            base_products: Some(dtype_name(self.session.matmul_dtype).into()),
        };
        let base_model = self.config.model.path.display().to_string();
        let run_dir = &self.run_dir.path;
        let dir = write_checkpoint(run_dir, model, &self.spec, &base_model, optim, &state)?;
        prune_checkpoints(run_dir, self.config.train.keep_last)?;
        Ok(dir)
    }
}

/// Whether something done every `every` steps (0 = only at the end) is due after step `done`.
fn due(done: usize, every: usize, is_last: bool) -> bool {
    is_last || (every > 0 && done.is_multiple_of(every))
}
