//! Text generation with a KV cache: the prompt is run once, then one token at a time.
//! Greedy at temperature 0, else temperature sampling with an optional nucleus (top-p) cut,
//! from a seeded RNG so a run can be repeated exactly.

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::tokenize::TextTokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Error;
use crate::llama::{KvCache, Llama};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 means greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep the most likely tokens whose probabilities add up to at least this (1 = all).
    pub top_p: f64,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Sampling {
    /// Rejects values that make no sense, naming the option.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Usage(format!(
                "--temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Usage(format!(
                "--top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Runs a model for generation: every row's new tokens in, the logits of the token that
/// follows each row out. Rows keep their own context; the first call gives the prompts.
pub trait Decoder {
    /// Appends `tokens[row]` to each row's context and returns, per row, the logits `[vocab]`
    /// after its last token.
    fn advance(&mut self, tokens: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Error>;

    /// Keeps only the rows `rows` (indices among the current rows, in that order).
    fn keep_rows(&mut self, rows: &[usize]);
}

/// [`Decoder`] through Burn operations ([`Llama::forward_cached`]), on any device: the prompts
/// are left-padded into one batch (padding masked, positions per row).
pub struct BurnDecoder<'a> {
    model: &'a Llama,
    device: Device,
    cache: KvCache,
    pads: Vec<usize>,
}

impl<'a> BurnDecoder<'a> {
    /// A decoder of `model` on `device`, with nothing seen yet.
    pub fn new(model: &'a Llama, device: &Device) -> Self {
        Self {
            model,
            device: device.clone(),
            cache: KvCache::default(),
            pads: Vec::new(),
        }
    }
}

impl Decoder for BurnDecoder<'_> {
    fn advance(&mut self, tokens: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Error> {
        let width = tokens.iter().map(Vec::len).max().unwrap_or(0);
        if self.cache.is_empty() {
            self.pads = tokens.iter().map(|t| width - t.len()).collect();
        } else if tokens.iter().any(|t| t.len() != width) {
            return Err(Error::Usage(
                "after the prompts, every row takes as many tokens".into(),
            ));
        }
        // Padding repeats each row's first token (masked; any valid id would do).
        let input: Vec<i64> = tokens
            .iter()
            .flat_map(|t| std::iter::repeat_n(t[0], width - t.len()).chain(t.iter().copied()))
            .map(i64::from)
            .collect();
        let rows = tokens.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [rows, width]), &self.device);
        let logits = self.model.forward_cached(ids, &self.pads, &mut self.cache);
        let vocab = logits.dims()[2];
        let last: Vec<f32> = logits
            .narrow(1, width - 1, 1)
            .reshape([rows * vocab])
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Usage(format!("cannot read logits: {e:?}")))?;
        Ok(last.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    fn keep_rows(&mut self, rows: &[usize]) {
        self.cache.keep_rows(rows);
        self.pads = rows.iter().map(|&row| self.pads[row]).collect();
    }
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after any id in `eos_ids`
/// (which is included in the result). `on_token` sees each new id as it is chosen.
pub fn generate(
    decoder: &mut dyn Decoder,
    prompt: &[u32],
    eos_ids: &[u32],
    max_new_tokens: usize,
    sampling: Sampling,
    mut on_token: impl FnMut(u32) -> Result<(), Error>,
) -> Result<Vec<u32>, Error> {
    let prompts = [prompt.to_vec()];
    let on_row_token = |_row: usize, id: u32| on_token(id);
    let mut rows = generate_batch(
        decoder,
        &prompts,
        eos_ids,
        max_new_tokens,
        sampling,
        on_row_token,
    )?;
    Ok(rows.remove(0))
}

/// Generates for all `prompts` at once: the prompts run in one pass, then every unfinished row
/// decodes one token per step; a row that ends (an id of `eos_ids`, included, or
/// `max_new_tokens`) leaves the batch. Each row gets its own RNG seeded with `sampling.seed`,
/// so its tokens are those [`generate`] gives for that prompt alone. `on_token(row, id)` sees
/// each new id. `decoder` must not have seen anything yet.
pub fn generate_batch(
    decoder: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    max_new_tokens: usize,
    sampling: Sampling,
    mut on_token: impl FnMut(usize, u32) -> Result<(), Error>,
) -> Result<Vec<Vec<u32>>, Error> {
    sampling.validate()?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Usage(format!("prompt {} has no tokens", i + 1)));
    }
    let mut rngs: Vec<StdRng> = prompts
        .iter()
        .map(|_| StdRng::seed_from_u64(sampling.seed))
        .collect();
    let mut generated = vec![Vec::new(); prompts.len()];
    let mut active: Vec<usize> = (0..prompts.len()).collect(); // prompt index of each row
    let mut input = prompts.to_vec();
    while max_new_tokens > 0 && !active.is_empty() {
        let logits = decoder.advance(&input)?;
        let mut keep = Vec::with_capacity(active.len());
        input = Vec::with_capacity(active.len());
        for (row, logits) in logits.iter().enumerate() {
            let prompt = active[row];
            let token = choose(logits, sampling, &mut rngs[prompt]);
            generated[prompt].push(token);
            on_token(prompt, token)?;
            if !eos_ids.contains(&token) && generated[prompt].len() < max_new_tokens {
                keep.push(row);
                input.push(vec![token]);
            }
        }
        if keep.len() < active.len() {
            decoder.keep_rows(&keep);
            active = keep.iter().map(|&row| active[row]).collect();
        }
    }
    Ok(generated)
}

/// Picks the next token from one row of logits.
fn choose(logits: &[f32], sampling: Sampling, rng: &mut StdRng) -> u32 {
    if sampling.temperature == 0.0 {
        return argmax(logits);
    }
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&l| l as f64 / sampling.temperature)
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(u32, f64)> = scaled
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (l - max).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // Nucleus: the shortest prefix whose mass reaches top_p (always at least one token).
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < probs.len() && (kept == 0 || mass < sampling.top_p * total) {
        mass += probs[kept].1;
        kept += 1;
    }
    let mut target = rng.random::<f64>() * mass;
    for &(id, p) in &probs[..kept] {
        if target < p {
            return id;
        }
        target -= p;
    }
    probs[kept - 1].0
}

/// Index of the largest logit (the first one on ties, as torch's argmax).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Turns a growing list of token ids into text pieces as soon as they decode cleanly: a
/// multi-byte character split over tokens, and a run of byte-fallback tokens (which the
/// tokenizer decodes as one group), are held back until complete; [`TextStream::finish`]
/// gives what is left at the end. The pieces together equal the decoding of all tokens.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    /// A stream over `tokenizer`'s decoding.
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the new text, if any is complete.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, Error> {
        self.ids.push(id);
        if self.tokenizer.is_byte_token(id) {
            return Ok(None);
        }
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(None);
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(Some(piece))
    }

    /// The text not yet given out (held back at the end of generation), if any.
    pub fn finish(&mut self) -> Result<Option<String>, Error> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        let rest = text.get(self.printed..).unwrap_or_default().to_string();
        self.printed = text.len();
        Ok((!rest.is_empty()).then_some(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_sampling_is_seeded() {
        let logits = [0.1, 3.0, 2.9, -5.0];
        let narrow = Sampling {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 1,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..50).all(|_| choose(&logits, narrow, &mut rng) == 1));
        let wide = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&logits, wide, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(
            draw(7).contains(&2),
            "a wide nucleus samples more than the top token"
        );
    }
}
