//! `feinschliff export adapter|merged`: what a run trained, as a PEFT adapter or a merged
//! Hugging Face model.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::io::gguf::dequant::GgmlType;
use feinschliff_model::io::gguf::file_type::GgufFileType;
use feinschliff_model::io::safetensors_out::StoreDtype;
use feinschliff_model::quant::BaseQuant;
use feinschliff_train::export::{export_adapter, export_merged, parse_size};
use feinschliff_train::export_gguf::{GgufSource, export_gguf, export_gguf_adapter};

#[derive(Subcommand)]
/// What `export` writes.
pub enum ExportCommand {
    /// A PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    Adapter(ExportAdapterArgs),
    /// A full Hugging Face model directory with the adapter merged into the weights.
    Merged(ExportMergedArgs),
    /// One GGUF file for llama.cpp / Ollama with the adapter merged into the weights.
    Gguf(ExportGgufArgs),
    /// llama.cpp's LoRA adapter GGUF, and an Ollama Modelfile on stdout.
    GgufAdapter(ExportGgufAdapterArgs),
}

/// Where a GGUF export takes its model from: a run, or directories.
#[derive(Args)]
pub struct GgufSourceArgs {
    /// The run directory.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    run: Option<PathBuf>,
    /// Which checkpoint of the run: last, best (lowest eval loss) or step-N.
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// A Hugging Face model directory instead of a run (for gguf-adapter: the adapter's base).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Compute backend to load --model on.
    #[arg(long, default_value = "flex", value_name = "NAME")]
    device: DeviceChoice,
    /// The GGUF file to create.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl GgufSourceArgs {
    fn source(&self, adapter: Option<PathBuf>) -> Result<GgufSource> {
        Ok(match (&self.run, &self.model) {
            (Some(run), _) => GgufSource::Run {
                run: run.clone(),
                checkpoint: self.checkpoint.clone(),
            },
            (None, Some(model)) => GgufSource::Dirs {
                model: model.clone(),
                adapter,
                device: self.device,
            },
            (None, None) => anyhow::bail!("--adapter needs --model DIR, the adapter's base model"),
        })
    }
}

/// Arguments of `export gguf`.
#[derive(Args)]
pub struct ExportGgufArgs {
    #[command(flatten)]
    source: GgufSourceArgs,
    /// Storage of the weight matrices, chosen per tensor as llama.cpp's llama-quantize does
    /// (norms and biases stay f32; q4_k_m mixes Q4_K and Q6_K; the command lists each tensor
    /// not of the main type).
    #[arg(
        long = "type",
        default_value = "f16",
        value_name = "f32|f16|bf16|q8_0|q4_0|q4_k|q4_k_m"
    )]
    ty: GgufFileType,
}

/// Arguments of `export gguf-adapter`.
#[derive(Args)]
pub struct ExportGgufAdapterArgs {
    #[command(flatten)]
    source: GgufSourceArgs,
    /// A PEFT adapter directory instead of a run (with --model, its base).
    #[arg(long, value_name = "DIR", conflicts_with = "run", requires = "model")]
    adapter: Option<PathBuf>,
    /// Storage of the LoRA matrices.
    #[arg(long = "type", default_value = "f32", value_name = "f32|f16|bf16|q8_0")]
    ty: String,
    /// The base model's GGUF, for the Modelfile's FROM line.
    #[arg(long, default_value = "./base.gguf", value_name = "FILE")]
    base_gguf: String,
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
    /// Merge into this full-precision model directory instead of the base the run trained on
    /// (for a run on a quantized base: the result then differs from the trained model).
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
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
        ExportCommand::Gguf(args) => run_gguf(args),
        ExportCommand::GgufAdapter(args) => run_gguf_adapter(args),
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
    let merged = export_merged(
        &source.run,
        &source.checkpoint,
        &source.out,
        args.dtype,
        args.max_shard_size,
        args.base.as_deref(),
    )?;
    let quant = merged.trained_quant.name();
    match (merged.own_base, merged.trained_quant) {
        (_, BaseQuant::None) => {}
        (true, _) => println!(
            "merged into the {quant} base the run trained on, dequantized ({}); --base DIR merges into a full-precision original instead",
            merged.path.display()
        ),
        (false, _) => eprintln!(
            "warning: merged into {}, not the {quant} base the run trained on: this model differs from the one trained and evaluated",
            merged.path.display()
        ),
    }
    println!("wrote {}", source.out.display());
    Ok(())
}

/// Writes the merged model as GGUF and lists each tensor's storage type.
fn run_gguf(args: ExportGgufArgs) -> Result<()> {
    let source = args.source.source(None)?;
    let summary = export_gguf(&source, &args.source.out, args.ty)?;
    print_tensors(&summary.tensors, &summary.notes);
    println!("wrote {}", args.source.out.display());
    Ok(())
}

/// Writes the adapter GGUF, then prints the Ollama Modelfile.
fn run_gguf_adapter(args: ExportGgufAdapterArgs) -> Result<()> {
    let ty = match args.ty.as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q8_0" => GgmlType::Q8_0,
        other => anyhow::bail!("--type `{other}` is not one of f32, f16, bf16, q8_0"),
    };
    let source = args.source.source(args.adapter.clone())?;
    let export = export_gguf_adapter(&source, &args.source.out, ty, &args.base_gguf)?;
    print_tensors(&export.tensors, &export.notes);
    println!("wrote {}", args.source.out.display());
    println!("# Ollama Modelfile:\n{}", export.modelfile);
    Ok(())
}

/// How many tensors of each storage type, which matrices are not of the most common one
/// (vectors, always F32, are only counted), and the notes.
fn print_tensors(tensors: &[(String, GgmlType)], notes: &[String]) {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, ty) in tensors {
        *counts.entry(format!("{ty:?}")).or_default() += 1;
    }
    let main = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(t, _)| t.clone());
    let summary: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!("tensors: {}", summary.join(", "));
    for (name, ty) in tensors {
        if Some(format!("{ty:?}")) != main && *ty != GgmlType::F32 {
            println!("  {name}: {ty:?}");
        }
    }
    for note in notes {
        println!("note: {note}");
    }
}
