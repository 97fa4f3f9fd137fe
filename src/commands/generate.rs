//! `feinschliff generate`: text from a prompt, streamed to stdout as it is decoded, or for
//! every prompt of a file in batches, one JSON line each.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use feinschliff_data::template::{ChatTemplate, Message};
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::backend::Device;
use feinschliff_model::generate::{Sampling, TextStream, generate, generate_batch};
use feinschliff_model::io::gguf::base::ModelFiles;
use feinschliff_model::llama::Llama;
use feinschliff_model::quant::BaseQuant;
use feinschliff_train::pass::decode::decoder;
use serde_json::json;

use super::model_args::ModelArgs;

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(
        long,
        required_unless_present = "prompts_file",
        conflicts_with = "prompts_file"
    )]
    prompt: Option<String>,
    /// Prompts from a file: one per non-empty line, or for a `.jsonl` file one JSON object
    /// with a `prompt` string per line. Prints one JSON line per prompt, in file order:
    /// `{"prompt", "completion", "new_tokens", "stop": "eos"|"length"}`.
    #[arg(long, value_name = "FILE")]
    prompts_file: Option<PathBuf>,
    /// Prompts generated together (padded into one batch) with --prompts-file.
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch_size: usize,
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

/// Generates and prints the continuation of `--prompt`, or of every prompt in
/// `--prompts-file`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let files = ModelFiles::of(&args.model.model)?;
    let tokenizer = TextTokenizer::from_model_dir(files.dir())?;
    let prompts = match (&args.prompt, &args.prompts_file) {
        (Some(prompt), _) => vec![prompt.clone()],
        (None, Some(file)) => read_prompts(file)?,
        (None, None) => bail!("give --prompt TEXT or --prompts-file FILE"),
    };
    let template = args
        .chat
        .then(|| ChatTemplate::new(tokenizer.config()))
        .transpose()?;
    let encode = |prompt: &String| -> Result<Vec<u32>> {
        Ok(match &template {
            Some(template) => {
                let text = template.render(&[Message::new("user", prompt.as_str())], true)?;
                tokenizer.encode(&text, false)?
            }
            None => tokenizer.encode(prompt, true)?,
        })
    };
    let ids = prompts.iter().map(encode).collect::<Result<Vec<_>>>()?;
    let (loaded, device) = args.model.load(&tokenizer, BaseQuant::None)?;
    let run = Generation {
        model: &loaded.model,
        eos: &loaded.eos_token_ids,
        tokenizer: &tokenizer,
        max_new_tokens: args.max_new_tokens,
        sampling,
        device: &device,
    };
    match args.prompts_file {
        None => run.stream(&ids[0]),
        Some(_) => run.answer_all(&prompts, &ids, args.batch_size),
    }
}

/// What every prompt of one `generate` call is generated with.
struct Generation<'a> {
    model: &'a Llama,
    eos: &'a [u32],
    tokenizer: &'a TextTokenizer,
    max_new_tokens: usize,
    sampling: Sampling,
    device: &'a Device,
}

impl Generation<'_> {
    /// Streams the continuation of one prompt to stdout, then its speed to stderr.
    fn stream(&self, ids: &[u32]) -> Result<()> {
        let mut timing = Timing::start();
        let mut stream = TextStream::new(self.tokenizer);
        let mut stdout = std::io::stdout();
        let (max_new, sampling) = (self.max_new_tokens, self.sampling);
        let mut decoder = decoder(self.model, self.device);
        let generated = generate(decoder.as_mut(), ids, self.eos, max_new, sampling, |id| {
            timing.token();
            if let Some(piece) = stream.push(id)? {
                use std::io::Write;
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Ok(())
        })?;
        if let Some(rest) = stream.finish()? {
            print!("{rest}");
        }
        println!();
        eprintln!("{}", timing.summary(ids.len(), generated.len()));
        Ok(())
    }

    /// Answers `prompts` (tokenized as `ids`) in batches of `batch_size`, one JSON line each,
    /// then the throughput to stderr.
    fn answer_all(&self, prompts: &[String], ids: &[Vec<u32>], batch_size: usize) -> Result<()> {
        let start = Instant::now();
        let (mut prompt_tokens, mut new_tokens) = (0, 0);
        for (texts, batch) in prompts.chunks(batch_size).zip(ids.chunks(batch_size)) {
            let (max_new, sampling) = (self.max_new_tokens, self.sampling);
            let mut decoder = decoder(self.model, self.device);
            let rows = generate_batch(
                decoder.as_mut(),
                batch,
                self.eos,
                max_new,
                sampling,
                |_, _| Ok(()),
            )?;
            for (text, new) in texts.iter().zip(&rows) {
                let stop = match new.last() {
                    Some(id) if self.eos.contains(id) => "eos",
                    _ => "length",
                };
                let completion = self.tokenizer.decode(new, true)?;
                let line = json!({ "prompt": text, "completion": completion, "new_tokens": new.len(), "stop": stop });
                println!("{line}");
            }
            prompt_tokens += batch.iter().map(Vec::len).sum::<usize>();
            new_tokens += rows.iter().map(Vec::len).sum::<usize>();
        }
        let seconds = start.elapsed().as_secs_f64();
        eprintln!(
            "{} prompts in batches of up to {batch_size}: {prompt_tokens} prompt tokens and \
             {new_tokens} new tokens in {seconds:.2} s ({:.1} new tokens/s)",
            prompts.len(),
            new_tokens as f64 / seconds
        );
        Ok(())
    }
}

/// The prompts of `path`: one per non-empty line, or for `.jsonl` the `prompt` string of each
/// line's JSON object. Errors name the file and line.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        if !jsonl {
            prompts.push(line.to_string());
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        match record["prompt"].as_str() {
            Some(prompt) => prompts.push(prompt.to_string()),
            None => bail!("{}: no `prompt` string", at()),
        }
    }
    if prompts.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(prompts)
}

/// When generation started and when its first and last tokens came: the first token ends the
/// prefill (the prompt in one pass), the others are decoded one at a time.
struct Timing {
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Timing {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            first: None,
            last: None,
        }
    }

    fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// `prefill: N tokens in S s (R tokens/s); decode: …` for a prompt of `prompt` tokens and
    /// `generated` new ones.
    fn summary(&self, prompt: usize, generated: usize) -> String {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return "no token generated".into();
        };
        let prefill = (first - self.start).as_secs_f64();
        let decode = (last - first).as_secs_f64();
        let decoded = generated.saturating_sub(1);
        format!(
            "prefill: {prompt} tokens in {prefill:.3} s ({:.1} tokens/s); decode: {decoded} tokens in {decode:.3} s ({:.1} tokens/s)",
            prompt as f64 / prefill,
            decoded as f64 / decode.max(f64::MIN_POSITIVE)
        )
    }
}
