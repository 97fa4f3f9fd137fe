//! `feinschliff data inspect`: the first examples of a run's training data with their trained
//! tokens marked, and the counts of both splits.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use feinschliff_data::dataset::load_dataset;
use feinschliff_data::inspect::{Marking, highlight};
use feinschliff_data::pack::{pack, packing_efficiency};
use feinschliff_data::prepared::SplitStats;
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::io::gguf::base::ModelFiles;
use feinschliff_train::run_config::RunConfig;

/// Arguments of `data inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The run configuration (TOML) whose [data] section is shown.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override a configuration key, e.g. --set data.max_len=1024 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Training examples shown.
    #[arg(long, default_value_t = 3, value_name = "N")]
    n: usize,
}

/// Prints examples and counts; tokenizes (and fills the token cache) when needed.
pub fn run(args: InspectArgs) -> Result<()> {
    let config = RunConfig::load(&args.config, &args.overrides)?;
    let data = &config.data;
    let files = ModelFiles::of(&config.model.path)?;
    let loaded = load_dataset(data, files.dir())?;
    let tokenizer = TextTokenizer::from_model_dir(files.dir())?;
    let marking = match std::io::stdout().is_terminal() {
        true => Marking::Colour,
        false => Marking::Brackets,
    };
    let legend = match marking {
        Marking::Colour => "trained tokens in green",
        Marking::Brackets => "trained tokens in [[…]]",
    };
    let examples = &loaded.data.train;
    for (i, example) in examples.iter().take(args.n).enumerate() {
        println!(
            "── example {} of {} ({} tokens, {} trained; {legend})",
            i + 1,
            examples.len(),
            example.ids.len(),
            example.trained_tokens()
        );
        println!("{}\n", highlight(example, &tokenizer, marking)?);
    }
    let source = match loaded.from_cache {
        true => "loaded from the token cache",
        false => "tokenized",
    };
    let name = |value: serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    println!(
        "format {}, max_len {}, train_on {}; {source} in {:.2} s{}",
        name(serde_json::to_value(data.format)?),
        data.max_len,
        name(serde_json::to_value(data.train_on)?),
        loaded.seconds,
        loaded
            .cache_file
            .as_ref()
            .map(|p| format!(" (cache {})", p.display()))
            .unwrap_or_default()
    );
    print_stats("train", &loaded.data.train_stats);
    print_stats("valid", &loaded.data.valid_stats);
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let rows = pack(&lengths, data.max_len).len();
    println!(
        "packing: {} rows of {} tokens, {:.1} % filled{}",
        rows,
        data.max_len,
        100.0 * packing_efficiency(&lengths, rows, data.max_len),
        match data.packing {
            true => "",
            false => " (data.packing is off: each example is a row, padded per micro-batch)",
        }
    );
    Ok(())
}

fn print_stats(split: &str, stats: &SplitStats) {
    println!(
        "{split}: {} records -> {} examples, {} tokens, {} trained; {} truncated, {} dropped",
        stats.records,
        stats.examples,
        stats.tokens,
        stats.trained_tokens,
        stats.truncated,
        stats.dropped
    );
}
