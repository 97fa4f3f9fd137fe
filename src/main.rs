//! The `feinschliff` command line: parses arguments, calls the libraries, prints results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use feinschliff_data::source::read_jsonl_texts;
use feinschliff_data::template::{ChatTemplate, Message};
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_train::backend::DeviceChoice;
use feinschliff_train::eval::evaluate;
use feinschliff_train::generate::{Sampling, TextStream, generate};
use feinschliff_train::io::hf::HfModel;

/// LoRA fine-tuning of Llama-family models on Burn, with exports that PEFT and transformers load.
#[derive(Parser)]
#[command(name = "feinschliff", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mean token loss and perplexity of a model over a JSONL file.
    ///
    /// Each record's text is tokenized on its own (with the tokenizer's own BOS handling), cut
    /// to the first --max-len tokens, and every token after the first is scored. The loss is
    /// the mean over all scored tokens of all records.
    Eval(EvalArgs),
    /// Generate text from a prompt (KV cache; stops at any EOS id).
    Generate(GenerateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_name = "NAME")]
    device: DeviceChoice,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file; each line an object with a string field (see --field).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => run_generate(args),
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
    let device = args.model.device.device();
    let texts = read_jsonl_texts(&args.data, &args.field)?;
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let loaded = HfModel::load(&args.model.model, &device)?;
    let report = evaluate(&loaded.model, &tokenizer, &texts, args.max_len, &device)
        .with_context(|| format!("evaluating {}", args.data.display()))?;
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
    let device = args.model.device.device();
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let prompt_ids = if args.chat {
        let template = ChatTemplate::new(tokenizer.config())?;
        let text = template.render(&[Message::new("user", args.prompt.as_str())], true)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let loaded = HfModel::load(&args.model.model, &device)?;
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
