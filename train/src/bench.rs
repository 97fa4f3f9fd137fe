//! `feinschliff bench`: training speed of a run configuration, measured on the real model, data
//! and hyper-parameters (the same steps `train` would take) without writing a run directory,
//! evaluating or checkpointing. Reports the median over the measured steps after warm-up, the
//! split of a step into forward, backward and optimizer, and the process's peak RSS.

use serde::Serialize;

use crate::Error;
use crate::base_products::Recorded;
use crate::optim::adamw;
use crate::progress::Progress;
use crate::run_config::{RunConfig, dtype_name};
use crate::schedule::learning_rate;
use crate::session::Session;
use crate::train_step::{StepReport, StepSettings, dropout_seed, train_step};

/// What `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The `--device` it ran on.
    pub device: String,
    /// Threads of the CPU backends (rayon's pool).
    pub threads: usize,
    /// The dtype the frozen base was stored in (`f32` or `bf16`).
    pub base_dtype: String,
    /// The dtype the frozen base's matrix products were computed in (`f32` or `bf16`).
    pub matmul_dtype: String,
    /// How the frozen projections are kept (`model.base_quant`).
    pub base_quant: String,
    /// Rows per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Tokens per row (`data.max_len`).
    pub seq_len: usize,
    /// Warm-up steps (not measured).
    pub warmup: usize,
    /// Measured steps.
    pub steps: usize,
    /// Real (non-padding) tokens per step, median over the measured steps.
    pub tokens_per_step: usize,
    /// Median training throughput in real tokens per second.
    pub tokens_per_second: f64,
    /// Slowest and fastest measured step, in tokens per second.
    pub tokens_per_second_range: [f64; 2],
    /// Median seconds per step.
    pub step_seconds: f64,
    /// Median seconds per step in forward passes and the loss (the output head's gradient is
    /// computed with the loss, chunk by chunk, so it counts here).
    pub forward_seconds: f64,
    /// Median seconds per step in backward passes.
    pub backward_seconds: f64,
    /// Median seconds per step in clipping and the optimizer update.
    pub optimizer_seconds: f64,
    /// Peak resident memory of the process so far, in bytes.
    pub peak_rss_bytes: u64,
    /// Loss of every step (warm-up included), to show the run trains.
    pub losses: Vec<f64>,
}

/// Runs `warmup + steps` training steps of `config` and measures the last `steps`.
pub fn bench(
    config: &RunConfig,
    steps: usize,
    warmup: usize,
    progress: &mut dyn Progress,
) -> Result<BenchReport, Error> {
    if steps == 0 {
        return Err(Error::Usage("--steps must be at least 1".into()));
    }
    if config.train.dpo().is_some() {
        return Err(Error::Usage(
            "bench measures the SFT step; time a DPO run with `train` (metrics.jsonl has its tokens/s)"
                .into(),
        ));
    }
    let (session, mut model) = Session::prepare(config, Recorded::Fresh, progress)?;
    session.device.seed(config.train.seed);
    model.attach_lora(&config.lora_spec(), &session.device);
    let mut optim = adamw(config).init();

    let plain = &session.plain_device;
    let mut reports: Vec<(usize, StepReport, f64)> = Vec::new();
    let mut losses = Vec::new();
    for step in 0..warmup + steps {
        let batches = session.batches(config, step);
        let tokens: usize = batches.iter().map(|b| b.real_tokens).sum();
        let train_cfg = &config.train;
        let settings = StepSettings {
            lr: learning_rate(
                train_cfg.schedule,
                train_cfg.lr,
                train_cfg.warmup_steps,
                warmup + steps,
                step,
            ),
            max_grad_norm: train_cfg.max_grad_norm,
            dropout_seed: dropout_seed(train_cfg.seed, step),
            mlp: train_cfg.mlp_activations(),
        };
        let started = std::time::Instant::now();
        let (updated, report) = train_step(model, &mut optim, &batches, settings, plain);
        let seconds = started.elapsed().as_secs_f64();
        model = updated;
        losses.push(report.loss);
        let phase = if step < warmup { "warm-up" } else { "measured" };
        progress.note(&format!(
            "{phase} step {}: {:.1} tok/s, loss {:.4} (forward {:.2} s, backward {:.2} s, optimizer {:.2} s)",
            step + 1,
            tokens as f64 / seconds,
            report.loss,
            report.forward_seconds,
            report.backward_seconds,
            report.optimizer_seconds
        ));
        if step >= warmup {
            reports.push((tokens, report, seconds));
        }
    }

    // The mean of the two middle values for an even count, like Python's `statistics.median`
    // that the PEFT reference reports.
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let half = values.len() / 2;
        match values.len() % 2 {
            1 => values[half],
            _ => (values[half - 1] + values[half]) / 2.0,
        }
    };
    let speeds: Vec<f64> = reports.iter().map(|(t, _, s)| *t as f64 / s).collect();
    let mut tokens: Vec<usize> = reports.iter().map(|r| r.0).collect();
    tokens.sort_unstable();
    Ok(BenchReport {
        device: session.choice.to_string(),
        threads: rayon::current_num_threads(),
        base_dtype: dtype_name(session.storage_dtype).into(),
        matmul_dtype: dtype_name(session.matmul_dtype).into(),
        base_quant: config.model.base_quant.name().into(),
        micro_batch: config.train.micro_batch,
        grad_accum: config.train.grad_accum,
        seq_len: config.data.max_len,
        warmup,
        steps,
        tokens_per_step: tokens[tokens.len() / 2],
        tokens_per_second: median(speeds.clone()),
        tokens_per_second_range: [
            speeds.iter().copied().fold(f64::INFINITY, f64::min),
            speeds.iter().copied().fold(0.0, f64::max),
        ],
        step_seconds: median(reports.iter().map(|r| r.2).collect()),
        forward_seconds: median(reports.iter().map(|r| r.1.forward_seconds).collect()),
        backward_seconds: median(reports.iter().map(|r| r.1.backward_seconds).collect()),
        optimizer_seconds: median(reports.iter().map(|r| r.1.optimizer_seconds).collect()),
        peak_rss_bytes: peak_rss_bytes(),
        losses,
    })
}

/// The process's peak resident set size (`getrusage`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes into the struct we pass.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0;
    }
    // SAFETY: initialised by the successful call above.
    let max_rss = unsafe { usage.assume_init() }.ru_maxrss as u64;
    // Linux reports kilobytes, macOS bytes.
    match cfg!(target_os = "macos") {
        true => max_rss,
        false => max_rss * 1024,
    }
}
