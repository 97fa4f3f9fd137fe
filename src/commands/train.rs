//! `feinschliff train`: a run as its configuration says, with Ctrl-C/SIGTERM turned into a
//! checkpoint and a resume hint.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::Result;
use clap::Args;
use feinschliff_train::run_config::RunConfig;
use feinschliff_train::trainer::train;
use signal_hook::consts::{SIGINT, SIGTERM};

use super::progress::TerminalProgress;

/// Arguments of `train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The run configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override a configuration key, e.g. --set train.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
}

/// Trains, prints the summary, and exits 128 + signal when a signal stopped the run.
pub fn run(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(run_dir) = &args.resume {
        overrides.push(format!(
            "output.run_dir={:?}",
            run_dir.display().to_string()
        ));
    }
    let config = RunConfig::load(&args.config, &overrides)?;
    // SIGINT/SIGTERM set the flag; the trainer finishes its step and writes a checkpoint.
    let stop = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_usize(signal, Arc::clone(&stop), signal as usize)?;
    }
    let mut progress = TerminalProgress::new();
    let summary = train(&config, args.resume.is_some(), &stop, &mut progress)?;
    progress.finish();
    println!("{}", serde_json::to_string(&summary)?);
    if let Some(signal) = summary.stopped_by_signal {
        eprintln!(
            "interrupted at step {}; continue with: feinschliff train --config {} --resume {}",
            summary.steps,
            args.config.display(),
            summary.run_dir.display()
        );
        std::process::exit(128 + signal as i32);
    }
    Ok(())
}
