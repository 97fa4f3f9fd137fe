//! `feinschliff eval`: mean token loss and perplexity over a data file or a run
//! configuration's validation split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use feinschliff_data::dataset::load_dataset;
use feinschliff_data::source::read_texts;
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::eval::{EvalReport, text_examples};
use feinschliff_model::io::gguf::base::ModelFiles;
use feinschliff_model::quant::BaseQuant;
use feinschliff_train::bench::peak_rss_bytes;
use feinschliff_train::packed_eval::evaluate_packed;
use feinschliff_train::run_config::RunConfig;

use super::model_args::ModelArgs;

/// Arguments of `eval`.
#[derive(Args)]
pub struct EvalArgs {
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
    /// Tokens per batch: records are sorted by length and packed into rows (attention never
    /// crosses records), as many rows per batch as fit.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    batch_tokens: usize,
    /// Print one JSON object on stdout instead of text (the report, with tokens/s and the
    /// process's peak RSS).
    #[arg(long)]
    json: bool,
}

/// Progress of the scoring on stderr, as a bar with tokens/s on a terminal, nothing otherwise.
fn eval_progress() -> impl FnMut(usize, usize, usize) {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} records  {msg}  ETA {eta}",
        )
        .expect("a valid template");
        indicatif::ProgressBar::new(0).with_style(style)
    });
    let start = std::time::Instant::now();
    move |done, total, tokens| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            let speed = tokens as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!("{speed:.0} tokens/s"));
            if done == total {
                bar.finish_and_clear();
            }
        }
    }
}

/// Scores the data and prints the report.
pub fn run(args: EvalArgs) -> Result<()> {
    let report = match (&args.config, &args.data) {
        (Some(config), _) => {
            let config = RunConfig::load(config, &args.overrides)?;
            if config.train.dpo().is_some() {
                anyhow::bail!(
                    "{}: a DPO run is evaluated by its DPO loss and reward accuracy, which `train` writes to metrics.jsonl at every evaluation; `eval` scores token losses",
                    args.config.as_ref().expect("config").display()
                );
            }
            let files = ModelFiles::of(&args.model.model)?;
            let loaded_data = load_dataset(&config.data, files.dir())?;
            let data = &loaded_data.data;
            if data.valid.is_empty() {
                anyhow::bail!(
                    "{}: the configuration has no validation data (data.valid or data.valid_fraction)",
                    args.config.as_ref().expect("config").display()
                );
            }
            let tokenizer = TextTokenizer::from_model_dir(files.dir())?;
            let (loaded, device) = args.model.load(&tokenizer, config.model.base_quant)?;
            loaded.check_examples(&loaded_data)?;
            let pad_id = tokenizer.pad_id();
            evaluate_packed(
                &loaded.model,
                &data.valid,
                args.batch_tokens,
                pad_id,
                &device,
                eval_progress(),
            )
        }
        (None, Some(data)) => {
            let texts = read_texts(std::slice::from_ref(data), &args.field)?;
            let files = ModelFiles::of(&args.model.model)?;
            let tokenizer = TextTokenizer::from_model_dir(files.dir())?;
            let (loaded, device) = args.model.load(&tokenizer, BaseQuant::None)?;
            let (examples, truncated) = text_examples(&tokenizer, &texts, args.max_len)
                .with_context(|| format!("evaluating {}", data.display()))?;
            let pad_id = tokenizer.pad_id();
            let report = evaluate_packed(
                &loaded.model,
                &examples,
                args.batch_tokens,
                pad_id,
                &device,
                eval_progress(),
            );
            EvalReport {
                records: texts.len(),
                truncated,
                max_len: args.max_len,
                ..report
            }
        }
        (None, None) => anyhow::bail!("give --data FILE or --config FILE"),
    };
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["peak_rss_bytes"] = peak_rss_bytes().into();
        println!("{json}");
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
