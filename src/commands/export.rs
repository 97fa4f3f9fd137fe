//! `feinschliff export adapter|merged`: what a run trained, as a PEFT adapter or a merged
//! Hugging Face model.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use feinschliff_model::io::safetensors_out::StoreDtype;
use feinschliff_train::export::{export_adapter, export_merged, parse_size};

#[derive(Subcommand)]
/// What `export` writes.
pub enum ExportCommand {
    /// A PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    Adapter(ExportAdapterArgs),
    /// A full Hugging Face model directory with the adapter merged into the weights.
    Merged(ExportMergedArgs),
}

#[derive(Args)]
/// Arguments of `export merged`.
pub struct ExportMergedArgs {
    #[command(flatten)]
    source: ExportAdapterArgs,
    /// Storage dtype of the weights.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    dtype: StoreDtype,
    /// Largest safetensors shard; bigger models get model.safetensors.index.json.
    #[arg(long, default_value = "5GB", value_parser = parse_size, value_name = "SIZE")]
    max_shard_size: usize,
}

#[derive(Args)]
/// Arguments of `export adapter` (and the source of `export merged`).
pub struct ExportAdapterArgs {
    /// The run directory.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Which checkpoint: last, best (lowest eval loss) or step-N.
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// The directory to create.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Runs one export.
pub fn run(command: ExportCommand) -> Result<()> {
    match command {
        ExportCommand::Adapter(args) => run_adapter(args),
        ExportCommand::Merged(args) => run_merged(args),
    }
}

/// Writes the adapter directory.
fn run_adapter(args: ExportAdapterArgs) -> Result<()> {
    let dir = export_adapter(&args.run, &args.checkpoint, &args.out)?;
    println!("wrote {}", dir.display());
    Ok(())
}

/// Writes the merged model directory.
fn run_merged(args: ExportMergedArgs) -> Result<()> {
    let source = &args.source;
    let dir = export_merged(
        &source.run,
        &source.checkpoint,
        &source.out,
        args.dtype,
        args.max_shard_size,
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}
