//! Generation on the training pass's host kernels: the prompts (prefill) and then one token
//! per row (decoding) run through the same ops as training and evaluation (fused RMSNorm,
//! RoPE, SiLU·up, `gemm` or tiled quantized products with the adapters), with attention
//! against each row's own KV cache (`kernels::cached_attention`), and logits only for the last
//! token of each row. No Burn graph is built per token and no row is padded. Devices without
//! host tensors generate through Burn operations ([`BurnDecoder`]); [`decoder`] picks.

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_model::Error;
use feinschliff_model::generate::{BurnDecoder, Decoder};
use feinschliff_model::kernels::cached_attention::{self, CacheShape, SequenceCache};
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};
use feinschliff_model::llama::{Attention, DecoderLayer, Llama, RmsNorm};

use crate::pass::backprop::head_norm;
use crate::pass::linear::linear_forward;
use crate::pass::ops::{
    Head, RopeTables, Shape, add, embedding_rows, from_heads, rms_norm, rotate_to_heads, silu_mul,
};

/// The decoder for `model` on `device`: [`HostDecoder`] on host tensors (flex, LibTorch's
/// CPU), [`BurnDecoder`] elsewhere.
pub fn decoder<'a>(model: &'a Llama, device: &Device) -> Box<dyn Decoder + 'a> {
    match is_host(device) {
        true => Box::new(HostDecoder::new(model, device)),
        false => Box::new(BurnDecoder::new(model, device)),
    }
}

/// [`Decoder`] on host tensors, each row with its own KV cache.
pub struct HostDecoder<'a> {
    model: &'a Llama,
    device: Device,
    /// Per layer, per row.
    caches: Vec<Vec<SequenceCache>>,
    /// Tokens each row has seen.
    seen: Vec<usize>,
}

impl<'a> HostDecoder<'a> {
    /// A decoder of `model` on the host device `device`, with nothing seen yet.
    pub fn new(model: &'a Llama, device: &Device) -> Self {
        Self {
            model,
            device: device.clone(),
            caches: vec![Vec::new(); model.model.layers.len()],
            seen: Vec::new(),
        }
    }
}

impl Decoder for HostDecoder<'_> {
    fn advance(&mut self, tokens: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Error> {
        if self.seen.is_empty() {
            self.seen = vec![0; tokens.len()];
            for layer in &mut self.caches {
                *layer = vec![SequenceCache::default(); tokens.len()];
            }
        }
        if tokens.is_empty() || tokens.len() != self.seen.len() || tokens.iter().any(Vec::is_empty)
        {
            return Err(Error::Usage(format!(
                "the decoder needs tokens for each of its {} rows (at least one row), got {} rows",
                self.seen.len(),
                tokens.len()
            )));
        }
        let step = Step::new(self.model, tokens, &self.seen, &self.device);
        let table = self.model.model.embed_tokens.val().inner();
        let mut x = embedding_rows(table, step.ids.clone());
        for (layer, caches) in self.model.model.layers.iter().zip(&mut self.caches) {
            x = layer_step(layer, x, &step, caches);
        }
        for (seen, row) in self.seen.iter_mut().zip(tokens) {
            *seen += row.len();
        }
        let last = x.select(0, step.last_tokens(&self.device));
        let normed = rms_norm(&self.model.model.norm, last);
        let logits = Head::of(self.model).logits(&normed);
        let vocab = logits.dims()[1];
        let values = HostTensor::of(logits);
        Ok(values
            .values()
            .chunks_exact(vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    fn keep_rows(&mut self, rows: &[usize]) {
        self.seen = rows.iter().map(|&row| self.seen[row]).collect();
        for layer in &mut self.caches {
            *layer = rows
                .iter()
                .map(|&row| std::mem::take(&mut layer[row]))
                .collect();
        }
    }
}

/// The new tokens of one call, packed row after row into one sequence of `n` tokens.
struct Step {
    ids: Tensor<1, Int>,
    /// Each row's tokens in the packed sequence.
    spans: Vec<std::ops::Range<usize>>,
    shape: Shape,
    rope: RopeTables,
}

impl Step {
    fn new(model: &Llama, tokens: &[Vec<u32>], seen: &[usize], device: &Device) -> Self {
        let n: usize = tokens.iter().map(Vec::len).sum();
        let mut spans = Vec::with_capacity(tokens.len());
        let (mut ids, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (row, &seen) in tokens.iter().zip(seen) {
            let start = ids.len();
            ids.extend(row.iter().map(|&id| i64::from(id)));
            positions.extend((seen..seen + row.len()).map(|p| p as i64));
            spans.push(start..ids.len());
        }
        let positions = Tensor::<2, Int>::from_data(TensorData::new(positions, [1, n]), device);
        let (cos, sin) = model.model.rope.cos_sin(positions);
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [n]), device),
            spans,
            shape: Shape { rows: 1, len: n },
            rope: RopeTables::new(cos.inner(), sin.inner()),
        }
    }

    /// The packed index of each row's last token.
    fn last_tokens(&self, device: &Device) -> Tensor<1, Int> {
        let last: Vec<i64> = self.spans.iter().map(|s| s.end as i64 - 1).collect();
        let rows = last.len();
        Tensor::from_data(TensorData::new(last, [rows]), device)
    }
}

/// One decoder layer over the step's tokens, their keys and values appended to `caches`.
fn layer_step(
    layer: &DecoderLayer,
    x: Tensor<2>,
    step: &Step,
    caches: &mut [SequenceCache],
) -> Tensor<2> {
    let attended = attention_step(&layer.self_attn, &layer.input_layernorm, &x, step, caches);
    let mid = add(attended, &x);
    let mlp = &layer.mlp;
    let normed = rms_norm(&layer.post_attention_layernorm, mid.clone());
    let gate = linear_forward(&mlp.gate_proj, &normed, None).0;
    let up = linear_forward(&mlp.up_proj, &normed, None).0;
    let down = linear_forward(&mlp.down_proj, &silu_mul(&gate, &up), None).0;
    add(down, &mid)
}

/// `o(attention(norm(x)))` of the step's tokens against everything their rows have seen.
fn attention_step(
    attn: &Attention,
    norm: &RmsNorm,
    x: &Tensor<2>,
    step: &Step,
    caches: &mut [SequenceCache],
) -> Tensor<2> {
    let (heads, kv_heads, head_dim) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
    let normed = rms_norm(norm, x.clone());
    let project = |linear| linear_forward(linear, &normed, None).0;
    let (q, k, v) = (
        project(&attn.q_proj),
        project(&attn.k_proj),
        project(&attn.v_proj),
    );
    let q = head_norm(attn.q_norm.as_ref(), q, head_dim).0;
    let k = head_norm(attn.k_norm.as_ref(), k, head_dim).0;
    let queries = HostTensor::of(rotate_to_heads(q, &step.shape, heads, head_dim, &step.rope));
    let keys = HostTensor::of(rotate_to_heads(
        k,
        &step.shape,
        kv_heads,
        head_dim,
        &step.rope,
    ));
    let values = HostTensor::of(v);
    let shape = CacheShape {
        heads,
        kv_heads,
        head_dim,
        window: attn.sliding_window,
    };
    for (cache, span) in caches.iter_mut().zip(&step.spans) {
        cache.append(keys.values(), values.values(), span.clone(), &shape);
    }
    let scale = (head_dim as f32).sqrt().recip();
    let out = cached_attention::forward(queries.values(), &step.spans, caches, &shape, scale);
    let out = HostTensor::new_like(&queries, out, queries.dims()).into_tensor();
    linear_forward(&attn.o_proj, &from_heads(out), None).0
}
