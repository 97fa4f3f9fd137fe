//! Evaluation: mean token loss and perplexity of a model over a set of texts.
//!
//! Each text is scored on its own: tokenized with the tokenizer's own special-token handling,
//! cut to the first `max_len` tokens, and every token after the first is predicted from the
//! ones before it. The loss is the mean over all scored tokens of all texts (token-weighted),
//! which is what transformers gives when the per-record sums are added up.
//!
//! This is the reference path, one text at a time through the model's Burn forward; `eval`
//! and evaluation during training score packed batches on the training pass's forward
//! (`feinschliff_train::packed_eval`), which gives the same loss.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::format::Example;
use feinschliff_data::tokenize::TextTokenizer;
use serde::Serialize;

use crate::Error;
use crate::llama::Llama;
use crate::loss::causal_lm_loss_sum;

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Mean negative log-likelihood per scored token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Number of scored tokens.
    pub tokens: usize,
    /// Number of texts read (texts of fewer than two tokens score nothing).
    pub records: usize,
    /// Texts cut at `max_len`.
    pub truncated: usize,
    /// The truncation length used.
    pub max_len: usize,
    /// Wall time of tokenizing and scoring.
    pub seconds: f64,
    /// Tokens run through the model per second.
    pub tokens_per_second: f64,
}

impl EvalReport {
    /// The report of `tokens` scored tokens whose losses sum to `nll`, with `forwarded` tokens
    /// run through the model since `start`; the caller fills in `records`, `truncated` and
    /// `max_len`.
    pub fn from_sums(nll: f64, tokens: usize, forwarded: usize, start: Instant) -> Self {
        let seconds = start.elapsed().as_secs_f64();
        let loss = nll / tokens.max(1) as f64;
        Self {
            loss,
            perplexity: loss.exp(),
            tokens,
            records: 0,
            truncated: 0,
            max_len: 0,
            seconds,
            tokens_per_second: forwarded as f64 / seconds,
        }
    }
}

/// Scores every text with `model`, one at a time through the model's Burn forward; see the
/// module docs for the exact definition. The reference of the packed evaluation that `eval`
/// uses (`feinschliff_train::packed_eval`).
pub fn evaluate(
    model: &Llama,
    tokenizer: &TextTokenizer,
    texts: &[String],
    max_len: usize,
    device: &Device,
) -> Result<EvalReport, Error> {
    let start = Instant::now();
    let (examples, truncated) = text_examples(tokenizer, texts, max_len)?;
    let (mut nll, mut tokens, mut forwarded) = (0.0f64, 0usize, 0usize);
    for example in &examples {
        let len = example.ids.len();
        let ids: Vec<i64> = example.ids.iter().map(|&id| i64::from(id)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, device).reshape([1, len]);
        let logits = model.forward(input.clone(), positions, None);
        let sum = causal_lm_loss_sum(logits, input);
        nll += sum.nll.into_scalar::<f64>();
        tokens += len - 1;
        forwarded += len;
    }
    Ok(EvalReport {
        records: texts.len(),
        truncated,
        max_len,
        ..EvalReport::from_sums(nll, tokens, forwarded, start)
    })
}

/// The texts as examples to score: tokenized with the tokenizer's own special-token handling,
/// cut to `max_len` tokens, every token after the first scored; texts of fewer than two tokens
/// (nothing to score) are left out. Also returns how many texts were cut.
pub fn text_examples(
    tokenizer: &TextTokenizer,
    texts: &[String],
    max_len: usize,
) -> Result<(Vec<Example>, usize), Error> {
    if max_len < 2 {
        return Err(Error::Usage(format!(
            "--max-len must be at least 2, got {max_len}"
        )));
    }
    let (mut examples, mut truncated) = (Vec::with_capacity(texts.len()), 0);
    for text in texts {
        let mut ids = tokenizer.encode(text, true)?;
        if ids.len() > max_len {
            ids.truncate(max_len);
            truncated += 1;
        }
        if ids.len() >= 2 {
            let trained = vec![true; ids.len()];
            examples.push(Example { ids, trained });
        }
    }
    if examples.is_empty() {
        return Err(Error::Usage(
            "no text has two or more tokens: nothing to score".into(),
        ));
    }
    Ok((examples, truncated))
}
