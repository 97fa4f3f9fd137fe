//! `feinschliff generate`: text from a prompt, streamed to stdout as it is decoded.

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
