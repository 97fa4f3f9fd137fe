//! Evaluation: mean token loss and perplexity of a model over a set of texts.
//!
//! Each text is scored on its own: tokenized with the tokenizer's own special-token handling,
//! cut to the first `max_len` tokens, and every token after the first is predicted from the
//! ones before it. The loss is the mean over all scored tokens of all texts (token-weighted),
//! which is what transformers gives when the per-record sums are added up.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::tokenize::TextTokenizer;
use serde::Serialize;

use crate::error::ModelError;
use crate::loss::causal_lm_loss_sum;
use crate::model::llama::Llama;

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

/// Scores every text with `model`; see the module docs for the exact definition.
pub fn evaluate(
    model: &Llama,
    tokenizer: &TextTokenizer,
    texts: &[String],
    max_len: usize,
    device: &Device,
) -> Result<EvalReport, ModelError> {
    if max_len < 2 {
        return Err(ModelError::Usage(format!(
            "--max-len must be at least 2, got {max_len}"
        )));
    }
    let start = Instant::now();
    let (mut nll, mut tokens, mut forwarded, mut truncated) = (0.0f64, 0usize, 0usize, 0usize);
    for text in texts {
        let mut ids = tokenizer.encode(text, true)?;
        if ids.len() > max_len {
            ids.truncate(max_len);
            truncated += 1;
        }
        if ids.len() < 2 {
            continue;
        }
        let len = ids.len();
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, device).reshape([1, len]);
        let logits = model.forward(input.clone(), positions, None);
        let sum = causal_lm_loss_sum(logits, input);
        nll += sum.nll.into_scalar::<f64>();
        tokens += len - 1;
        forwarded += len;
    }
    let seconds = start.elapsed().as_secs_f64();
    if tokens == 0 {
        return Err(ModelError::Usage(
            "no text has two or more tokens: nothing to score".into(),
        ));
    }
    let loss = nll / tokens as f64;
    Ok(EvalReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        records: texts.len(),
        truncated,
        max_len,
        seconds,
        tokens_per_second: forwarded as f64 / seconds,
    })
}
