//! `feinschliff bench`: training speed and memory of a run configuration.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use feinschliff_train::bench::bench;
use feinschliff_train::run_config::RunConfig;

use super::progress::TerminalProgress;

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The run configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override a configuration key, e.g. --set train.micro_batch=8 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Measured steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Steps run first and not measured.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Measures and prints the report.
pub fn run(args: BenchArgs) -> Result<()> {
    let config = RunConfig::load(&args.config, &args.overrides)?;
    let mut progress = TerminalProgress::plain();
    let report = bench(&config, args.steps, args.warmup, &mut progress)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let [slowest, fastest] = report.tokens_per_second_range;
    println!(
        "device {} ({} threads, base in {}, quantized {}, products in {}), micro-batch {} x {} tokens, grad_accum {}; {} steps after {} warm-up",
        report.device,
        report.threads,
        report.base_dtype,
        report.base_quant,
        report.matmul_dtype,
        report.micro_batch,
        report.seq_len,
        report.grad_accum,
        report.steps,
        report.warmup
    );
    println!(
        "train      {:.1} tok/s (median; range {slowest:.1} to {fastest:.1}), {} tokens per step",
        report.tokens_per_second, report.tokens_per_step
    );
    println!(
        "step       {:.2} s = forward {:.2} s + backward {:.2} s + optimizer {:.2} s (medians)",
        report.step_seconds,
        report.forward_seconds,
        report.backward_seconds,
        report.optimizer_seconds
    );
    println!("peak RSS   {:.2} GB", report.peak_rss_bytes as f64 / 1e9);
    Ok(())
}
