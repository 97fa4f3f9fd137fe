//! The `feinschliff` command line: parses arguments, calls the libraries, prints results.

mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use feinschliff_data::dataset::load_dataset;
use feinschliff_data::source::read_texts;
use feinschliff_data::template::{ChatTemplate, Message};
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_train::backend::{Device, DeviceChoice};
use feinschliff_train::bench::bench;
use feinschliff_train::eval::{evaluate, evaluate_examples};
use feinschliff_train::export::{export_adapter, export_merged, parse_size};
use feinschliff_train::generate::{Sampling, TextStream, generate};
use feinschliff_train::io::gguf_import::import_gguf;
use feinschliff_train::io::hf::HfModel;
use feinschliff_train::io::peft::load_adapter;
use feinschliff_train::io::safetensors_out::StoreDtype;
use feinschliff_train::run_config::RunConfig;
use feinschliff_train::trainer::{Progress, train};
use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};

/// LoRA fine-tuning of Llama-family models on Burn, with exports that PEFT and transformers load.
#[derive(Parser)]
#[command(name = "feinschliff", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mean token loss and perplexity over a data file or a run's validation split.
    ///
    /// With --data (.jsonl, .json, .parquet or .csv): each record's text is tokenized on its
    /// own (with the tokenizer's own BOS handling), cut to the first --max-len tokens, and every
    /// token after the first is scored. With --config: the configuration's validation split,
    /// scored exactly as training scores it (its format and trained tokens). The loss is the
    /// mean over all scored tokens.
    Eval(EvalArgs),
    /// Generate text from a prompt (KV cache; stops at any EOS id).
    Generate(GenerateArgs),
    /// Convert a Llama GGUF file (llama.cpp) into a Hugging Face model directory.
    ///
    /// Writes config.json, generation_config.json, model.safetensors, tokenizer.json and
    /// tokenizer_config.json (with the GGUF's chat template). Quantized tensors (Q8_0, Q4_0,
    /// Q4_1, Q4_K, Q5_K, Q6_K) are dequantized. OUT_DIR must not exist; nothing is left under
    /// its name if the import fails.
    ImportGguf(ImportGgufArgs),
    /// Train LoRA adapters as a TOML run configuration says (see configs/).
    ///
    /// Writes into output.run_dir: config.toml (the resolved configuration), metrics.jsonl,
    /// checkpoints/step-N/ (each a PEFT adapter directory plus optimizer state), loss.png and
    /// summary.json (also printed on stdout as one JSON object). Every key is listed in
    /// docs/configuration.md. Ctrl-C/SIGTERM: finishes the step, writes a checkpoint, exits
    /// 130/143; continue with --resume.
    Train(TrainArgs),
    /// Measure training speed and memory of a run configuration.
    ///
    /// Runs --warmup + --steps optimizer steps exactly as `train` would (same model, data,
    /// micro-batch, accumulation, LoRA and optimizer settings) but writes no run directory,
    /// evaluates nothing and saves no checkpoint. Prints the median tokens per second of the
    /// measured steps, the split of a step into forward, backward and optimizer time, and the
    /// process's peak RSS; --json prints one JSON object on stdout instead.
    Bench(BenchArgs),
    /// Export what a run trained.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Look at training data as the trainer sees it.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Show training examples with their trained tokens marked, and the data's counts.
    ///
    /// Prints the first examples with their trained tokens marked (green on a terminal, [[…]]
    /// otherwise) and the counts of both splits: records, examples, tokens, trained tokens,
    /// truncated and dropped records, packing efficiency. Fills the token cache. See
    /// docs/data.md.
    Inspect(inspect::InspectArgs),
}

#[derive(Args)]
struct TrainArgs {
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

#[derive(Args)]
struct BenchArgs {
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

#[derive(Subcommand)]
enum ExportCommand {
    /// A PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    Adapter(ExportAdapterArgs),
    /// A full Hugging Face model directory with the adapter merged into the weights.
    Merged(ExportMergedArgs),
}

#[derive(Args)]
struct ExportMergedArgs {
    #[command(flatten)]
    source: ExportAdapterArgs,
    /// Storage dtype of the weights.
    #[arg(long, default_value = "f32", value_parser = parse_store_dtype, value_name = "f32|bf16|f16")]
    dtype: StoreDtype,
    /// Largest safetensors shard; bigger models get model.safetensors.index.json.
    #[arg(long, default_value = "5GB", value_parser = parse_size, value_name = "SIZE")]
    max_shard_size: usize,
}

#[derive(Args)]
struct ExportAdapterArgs {
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

#[derive(Args)]
struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_name = "NAME")]
    device: DeviceChoice,
    /// A PEFT LoRA adapter directory to apply on top of the model (ours or PEFT's).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// The model, with the adapter applied when one is given.
    fn load(&self) -> Result<(HfModel, Device)> {
        let device = self.device.device();
        let mut loaded = HfModel::load(&self.model, &device)?;
        if let Some(adapter) = &self.adapter {
            load_adapter(&mut loaded.model, adapter, &device)?;
        }
        Ok((loaded, device))
    }
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Data file (.jsonl, .json array, .parquet or .csv); each record has a string field (see
    /// --field).
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    data: Option<PathBuf>,
    /// Score the validation split of this run configuration instead, exactly as training
    /// evaluates it (its format, template, trained tokens and max_len).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "field", "max_len"])]
    config: Option<PathBuf>,
    /// Override a key of --config, e.g. --set data.valid=other.jsonl (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// The record field that holds the text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Tokens kept per record (longer records are cut).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_len: usize,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as one user message through the model's chat template, with the
    /// generation prompt.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_new_tokens: usize,
    /// 0 = greedy; higher values sample more freely.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens covering this probability mass.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    top_p: f64,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
}

#[derive(Args)]
struct ImportGgufArgs {
    /// The GGUF file.
    #[arg(value_name = "FILE.gguf")]
    gguf: PathBuf,
    /// The model directory to create.
    #[arg(value_name = "OUT_DIR")]
    out_dir: PathBuf,
    /// Storage dtype of the weights written.
    #[arg(long, default_value = "f32", value_parser = parse_store_dtype, value_name = "f32|bf16|f16")]
    dtype: StoreDtype,
}

fn parse_store_dtype(name: &str) -> Result<StoreDtype, String> {
    match name {
        "f32" => Ok(StoreDtype::F32),
        "bf16" => Ok(StoreDtype::BF16),
        "f16" => Ok(StoreDtype::F16),
        other => Err(format!("`{other}` is not one of f32, bf16")),
    }
}

/// jemalloc keeps freed memory for reuse for a while; glibc's malloc hands every large tensor
/// buffer back to the kernel on free, and the next allocation of it page-faults on fresh
/// zeroed pages (28 % of a training step in `perf`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: large buffers come from the ordinary arenas (not the oversize
/// arena, which returns them to the kernel at once) and freed pages are kept for reuse, so the
/// peak RSS is the peak of live tensors and steady-state steps do not page-fault. `thp:always`
/// asks for transparent huge pages and, as a side effect we rely on, makes jemalloc zero a
/// recycled buffer for `calloc` with `memset` instead of `madvise(MADV_DONTNEED)`: burn-flex
/// allocates every output zeroed, and handing those pages back to the kernel cost a page fault
/// per 4 KiB and a TLB shootdown on every core, a third of a training step (72 → 106 tok/s).
#[cfg(all(not(target_env = "msvc"), not(target_os = "macos")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf =
    JemallocConf(c"oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always".as_ptr());

/// A C string pointer jemalloc reads once at start-up.
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
unsafe impl Sync for JemallocConf {}

fn main() -> ExitCode {
    // Past a file-size limit (RLIMIT_FSIZE) the kernel would kill us with SIGXFSZ; with the
    // signal caught, the write fails with EFBIG instead and is reported like a full disk.
    if let Err(error) = signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false))) {
        eprintln!("warning: cannot catch SIGXFSZ: {error}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => run_generate(args),
        Command::ImportGguf(args) => run_import_gguf(args),
        Command::Train(args) => run_train(args),
        Command::Bench(args) => run_bench(args),
        Command::Export(ExportCommand::Adapter(args)) => run_export_adapter(args),
        Command::Export(ExportCommand::Merged(args)) => run_export_merged(args),
        Command::Data(DataCommand::Inspect(args)) => inspect::run_inspect(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let report = match (&args.config, &args.data) {
        (Some(config), _) => {
            let config = RunConfig::load(config, &args.overrides).map_err(anyhow::Error::msg)?;
            let data = load_dataset(&config.data, &args.model.model)?.data;
            if data.valid.is_empty() {
                anyhow::bail!(
                    "{}: the configuration has no validation data (data.valid or data.valid_fraction)",
                    args.config.as_ref().expect("config").display()
                );
            }
            let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
            let (loaded, device) = args.model.load()?;
            let batch = config.train.micro_batch;
            evaluate_examples(
                &loaded.model,
                &data.valid,
                batch,
                tokenizer.pad_id(),
                &device,
            )
        }
        (None, Some(data)) => {
            let texts = read_texts(std::slice::from_ref(data), &args.field)?;
            let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
            let (loaded, device) = args.model.load()?;
            evaluate(&loaded.model, &tokenizer, &texts, args.max_len, &device)
                .with_context(|| format!("evaluating {}", data.display()))?
        }
        (None, None) => anyhow::bail!("give --data FILE or --config FILE"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  tokens {}  records {} ({} truncated at {})  {:.1} s  {:.1} tokens/s",
            report.loss,
            report.perplexity,
            report.tokens,
            report.records,
            report.truncated,
            report.max_len,
            report.seconds,
            report.tokens_per_second
        );
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let prompt_ids = if args.chat {
        let template = ChatTemplate::new(tokenizer.config())?;
        let text = template.render(&[Message::new("user", args.prompt.as_str())], true)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let (loaded, device) = args.model.load()?;
    let mut stream = TextStream::new(&tokenizer);
    let mut stdout = std::io::stdout();
    generate(
        &loaded.model,
        &prompt_ids,
        &loaded.eos_token_ids,
        args.max_new_tokens,
        sampling,
        &device,
        |id| {
            if let Some(piece) = stream.push(id)? {
                use std::io::Write;
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Ok(())
        },
    )?;
    println!();
    Ok(())
}

fn run_import_gguf(args: ImportGgufArgs) -> Result<()> {
    let summary = import_gguf(&args.gguf, &args.out_dir, args.dtype)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({} tensors, {:.1} M parameters)",
        summary.out_dir.display(),
        summary.tensors,
        summary.parameters as f64 / 1e6
    );
    Ok(())
}

fn run_train(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(run_dir) = &args.resume {
        overrides.push(format!(
            "output.run_dir={:?}",
            run_dir.display().to_string()
        ));
    }
    let config = RunConfig::load(&args.config, &overrides).map_err(anyhow::Error::msg)?;
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

fn run_bench(args: BenchArgs) -> Result<()> {
    let config = RunConfig::load(&args.config, &args.overrides).map_err(anyhow::Error::msg)?;
    let mut progress = TerminalProgress::plain();
    let report = bench(&config, args.steps, args.warmup, &mut progress)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let [slowest, fastest] = report.tokens_per_second_range;
    println!(
        "device {} ({} threads, base in {}, products in {}), micro-batch {} x {} tokens, grad_accum {}; {} steps after {} warm-up",
        report.device,
        report.threads,
        report.base_dtype,
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

fn run_export_adapter(args: ExportAdapterArgs) -> Result<()> {
    let dir = export_adapter(&args.run, &args.checkpoint, &args.out)?;
    println!("wrote {}", dir.display());
    Ok(())
}

fn run_export_merged(args: ExportMergedArgs) -> Result<()> {
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

/// Training progress on stderr: a progress bar (step, loss, lr, speed, ETA) on a terminal,
/// one plain line per step otherwise (CI logs).
struct TerminalProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl TerminalProgress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} step {pos}/{len}  {msg}  ETA {eta}",
            )
            .expect("a valid template");
            bar.set_style(style);
            bar
        });
        Self { bar }
    }

    /// Plain lines even on a terminal (for reports that print their own summary).
    fn plain() -> Self {
        Self { bar: None }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

impl Progress for TerminalProgress {
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn step(&mut self, done: usize, total: usize, summary: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(summary.to_string());
            }
            None => eprintln!("step {done}/{total}  {summary}"),
        }
    }
}
