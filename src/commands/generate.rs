//! `feinschliff generate`: text from a prompt, streamed to stdout as it is decoded.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use feinschliff_data::template::{ChatTemplate, Message};
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::generate::{Sampling, TextStream, generate};

use super::model_args::ModelArgs;

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
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

/// Generates and prints the continuation.
pub fn run(args: GenerateArgs) -> Result<()> {
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
    let (loaded, device) = args.model.load(&tokenizer)?;
    let mut stream = TextStream::new(&tokenizer);
    let mut stdout = std::io::stdout();
    let mut timing = Timing::start();
    let generated = generate(
        &loaded.model,
        &prompt_ids,
        &loaded.eos_token_ids,
        args.max_new_tokens,
        sampling,
        &device,
        |id| {
            timing.token();
            if let Some(piece) = stream.push(id)? {
                use std::io::Write;
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Ok(())
        },
    )?;
    if let Some(rest) = stream.finish()? {
        print!("{rest}");
    }
    println!();
    eprintln!("{}", timing.summary(prompt_ids.len(), generated.len()));
    Ok(())
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
