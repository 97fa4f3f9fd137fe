//! The training pass of a LoRA-adapted [`Llama`] with a hand-written backward pass.
//!
//! Burn's autodiff keeps every intermediate of the decomposed attention and of the
//! `[tokens, vocab]` log-softmax, and it allocates a graph node per operation. Here the forward
//! pass keeps only what the backward pass needs (per layer: its input, the q/k projections
//! before Qwen3's per-head norms, the rotated queries and keys, the values, the attention
//! output, the MLP's gate and up projections, and the adapters' rank-`r` intermediates); attention probabilities are recomputed layer by layer in the
//! backward pass, dropout masks are rebuilt from their seeds, and the loss and its gradient are
//! computed in row chunks, so the full logits never exist. Gradients are computed only for the
//! adapters (the base is frozen), with the same formulas autodiff would use; the tests compare
//! both (`train/tests/backprop.rs`).
//!
//! All tensors here live on the device without autodiff. The ops ([`crate::pass::ops`]) and
//! the adapted projections ([`crate::pass::linear`]) choose between our host kernels and Burn
//! operations themselves, so this file is the maths of the layers only.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::batch::{Batch, IGNORE_INDEX};
use feinschliff_model::linear::Linear;
use feinschliff_model::llama::{DecoderLayer, Llama, RmsNorm};

use crate::pass::dropout_mask::{Dropout, child_seed};
use crate::pass::linear::{AdapterTape, linear_backward, linear_forward};
use crate::pass::ops::{
    Head, KeyMask, RopeTables, Shape, add, attention_backward, attention_forward, embedding_rows,
    from_heads, head_loss_backward, rms_norm, rms_norm_backward, rotate_to_heads, silu_mul,
    silu_mul_backward, to_heads, unrotate_from_heads,
};

/// Adapter gradients summed over micro-batches, in the order they were first produced (so
/// anything summed over them is summed in the same order in every run).
#[derive(Default)]
pub struct AdapterGrads {
    order: Vec<(ParamId, Tensor<2>)>,
    index: HashMap<ParamId, usize>,
}

impl AdapterGrads {
    /// Adds `grad` to the gradient of parameter `id`.
    pub fn add(&mut self, id: ParamId, grad: Tensor<2>) {
        match self.index.get(&id) {
            Some(&at) => {
                let previous = self.order[at].1.clone();
                self.order[at].1 = previous + grad;
            }
            None => {
                self.index.insert(id, self.order.len());
                self.order.push((id, grad));
            }
        }
    }

    /// The gradients with their parameter ids.
    pub fn into_inner(self) -> Vec<(ParamId, Tensor<2>)> {
        self.order
    }
}

/// What the forward pass keeps of each layer's MLP for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MlpActivations {
    /// The gate and up projections' outputs (`2 · intermediate_size` values per token).
    #[default]
    Keep,
    /// Nothing: the backward pass recomputes the gate and up projections, with their adapters'
    /// tapes, from the layer's kept `mid` (the same values: same kernels, same dropout masks).
    /// Two thirds less activation memory per layer of a Llama, for two projections' forward
    /// products again.
    Recompute,
}

/// One micro-batch's share of a step: forward, loss and backward.
pub struct MicroBatchResult {
    /// Sum of `-log p(label)` over the scored tokens, times the loss scale.
    pub loss: f64,
    /// Seconds spent in the forward pass and the loss, with the loss's gradient at the output
    /// head (computed together, chunk by chunk).
    pub forward_seconds: f64,
    /// Seconds spent in the backward pass.
    pub backward_seconds: f64,
}

/// Runs `batch` through `model`, scores it (labels shifted by one, `-100` ignored), and adds the
/// gradient of `loss_scale · Σ nll` with respect to every adapter parameter to `grads`.
/// Dropout masks derive from `dropout_seed`; the frozen base multiplies in the dtypes the model
/// was given ([`Llama::set_base_dtypes`]); `device` is the device without autodiff.
pub fn forward_backward(
    model: &Llama,
    batch: &Batch,
    loss_scale: f64,
    dropout_seed: u64,
    mlp: MlpActivations,
    device: &Device,
    grads: &mut AdapterGrads,
) -> MicroBatchResult {
    let loss = |normed, head: &Head, targets: &[i64]| {
        head_loss_backward(normed, head, targets, loss_scale, device)
    };
    forward_backward_with(model, batch, dropout_seed, mlp, device, grads, loss)
}

/// [`forward_backward`] with another loss: `loss(normed, head, targets)` gets the final
/// normed hidden states `[rows · len, hidden]`, the output head and the shifted targets, and
/// returns the loss and its gradient with respect to `normed`.
pub fn forward_backward_with(
    model: &Llama,
    batch: &Batch,
    dropout_seed: u64,
    mlp: MlpActivations,
    device: &Device,
    grads: &mut AdapterGrads,
    loss: impl FnOnce(Tensor<2>, &Head, &[i64]) -> (f64, Tensor<2>),
) -> MicroBatchResult {
    let started = std::time::Instant::now();
    let (pass, mut x) = Pass::start(model, batch, device);
    let mut tapes = Vec::with_capacity(model.model.layers.len());
    for (index, layer) in model.model.layers.iter().enumerate() {
        let masks = LayerMasks::new(child_seed(dropout_seed, index as u64));
        let (out, tape) = layer_forward(layer, x, &pass, &masks, mlp);
        tapes.push(tape);
        x = out;
    }
    let normed = rms_norm(&model.model.norm, x.clone());
    let targets = shifted_targets(batch);
    let (loss, d_normed) = loss(normed, &Head::of(model), &targets);
    let forward_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let mut dx = rms_norm_backward(&model.model.norm, x, d_normed);
    for (index, layer) in model.model.layers.iter().enumerate().rev() {
        let masks = LayerMasks::new(child_seed(dropout_seed, index as u64));
        let tape = tapes.pop().expect("one tape per layer");
        dx = layer_backward(layer, tape, dx, &pass, &masks, grads);
    }
    MicroBatchResult {
        loss,
        forward_seconds,
        backward_seconds: started.elapsed().as_secs_f64(),
    }
}

/// What every layer of one micro-batch's pass shares.
pub(crate) struct Pass {
    shape: Shape,
    rope: RopeTables,
    key_mask: KeyMask,
}

impl Pass {
    /// The shared state of a pass over `batch`, and the embedded tokens `[rows · len, hidden]`.
    pub(crate) fn start(model: &Llama, batch: &Batch, device: &Device) -> (Self, Tensor<2>) {
        let (rows, len) = (batch.rows, batch.len);
        let int = |values: &Vec<i64>| {
            Tensor::<2, Int>::from_data(TensorData::new(values.clone(), [rows, len]), device)
        };
        let (cos, sin) = model.model.rope.cos_sin(int(&batch.positions));
        let layers = &model.model.layers;
        let windows: Vec<_> = layers.iter().map(|l| l.self_attn.sliding_window).collect();
        let pass = Pass {
            shape: Shape { rows, len },
            rope: RopeTables::new(cos.inner(), sin.inner()),
            key_mask: KeyMask::new(&batch.segments, [rows, len], &windows, device),
        };
        let table = model.model.embed_tokens.val().inner();
        let x = embedding_rows(table, int(&batch.ids).reshape([rows * len]));
        (pass, x)
    }
}

/// Seeds of the seven adapters' dropout masks in one layer (none for evaluation).
pub(crate) struct LayerMasks {
    seed: Option<u64>,
}

impl LayerMasks {
    fn new(seed: u64) -> Self {
        Self { seed: Some(seed) }
    }

    /// No dropout anywhere (evaluation).
    pub(crate) fn none() -> Self {
        Self { seed: None }
    }

    /// The dropout for projection `which` (0 = q … 6 = down) of `linear`; `None` without an
    /// adapter, without dropout or for evaluation.
    fn get(&self, linear: &Linear, which: u64) -> Option<Dropout> {
        let seed = self.seed?;
        let adapter = linear.lora.as_ref()?;
        let prob = adapter.dropout.prob;
        (prob > 0.0).then(|| Dropout::new(child_seed(seed, which), prob))
    }
}

/// What one layer's backward pass needs from its forward pass.
pub(crate) struct LayerTape {
    input: Tensor<2>,
    /// The q and k projections before their per-head norms (Qwen3), where there are norms.
    q_raw: Option<Tensor<2>>,
    k_raw: Option<Tensor<2>>,
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    attended: Tensor<2>,
    mid: Tensor<2>,
    /// The MLP's gate and up projections with their adapters' tapes, unless they are
    /// recomputed.
    gate_up: Option<MlpTape>,
    /// What the adapters of q, k, v, o and down keep for their backward passes.
    adapters: [Option<AdapterTape>; 5],
}

/// The MLP's gate and up projections and what their adapters keep.
type MlpTape = [(Tensor<2>, Option<AdapterTape>); 2];

/// One decoder layer: `mid = x + attention(norm(x))`, `out = mid + mlp(norm(mid))`; also
/// returns what its backward pass needs.
pub(crate) fn layer_forward(
    layer: &DecoderLayer,
    x: Tensor<2>,
    pass: &Pass,
    masks: &LayerMasks,
    activations: MlpActivations,
) -> (Tensor<2>, LayerTape) {
    let (shape, rope) = (&pass.shape, &pass.rope);
    let linear = |linear: &Linear, x: &Tensor<2>, which: u64| {
        linear_forward(linear, x, masks.get(linear, which))
    };
    let attn = &layer.self_attn;
    let normed = rms_norm(&layer.input_layernorm, x.clone());
    let (q, lq) = linear(&attn.q_proj, &normed, 0);
    let (k, lk) = linear(&attn.k_proj, &normed, 1);
    let (v, lv) = linear(&attn.v_proj, &normed, 2);
    let (q, q_raw) = head_norm(attn.q_norm.as_ref(), q, attn.head_dim);
    let (k, k_raw) = head_norm(attn.k_norm.as_ref(), k, attn.head_dim);
    let queries = rotate_to_heads(q, shape, attn.num_heads, attn.head_dim, rope);
    let keys = rotate_to_heads(k, shape, attn.num_kv_heads, attn.head_dim, rope);
    let values = to_heads(v, shape, attn.num_kv_heads, attn.head_dim);
    let attended = from_heads(attention_forward(
        attn,
        &queries,
        &keys,
        &values,
        &pass.key_mask,
    ));
    let (o, lo) = linear(&attn.o_proj, &attended, 3);
    let mid = add(o, &x);

    let mlp = &layer.mlp;
    let normed = rms_norm(&layer.post_attention_layernorm, mid.clone());
    let (gate, lg) = linear(&mlp.gate_proj, &normed, 4);
    let (up, lu) = linear(&mlp.up_proj, &normed, 5);
    let act = silu_mul(&gate, &up);
    let (down, ld) = linear(&mlp.down_proj, &act, 6);
    let out = add(down, &mid);
    let tape = LayerTape {
        input: x,
        q_raw,
        k_raw,
        queries,
        keys,
        values,
        attended,
        mid,
        gate_up: (activations == MlpActivations::Keep).then_some([(gate, lg), (up, lu)]),
        adapters: [lq, lk, lv, lo, ld],
    };
    (out, tape)
}

/// The gradient of [`layer_forward`] with respect to its input, given `d_out`; adds the
/// adapters' gradients to `grads`.
fn layer_backward(
    layer: &DecoderLayer,
    tape: LayerTape,
    d_out: Tensor<2>,
    pass: &Pass,
    masks: &LayerMasks,
    grads: &mut AdapterGrads,
) -> Tensor<2> {
    let LayerTape {
        input,
        q_raw,
        k_raw,
        queries,
        keys,
        values,
        attended,
        mid,
        gate_up,
        adapters: [lq, lk, lv, lo, ld],
    } = tape;
    let mut linear = |linear: &Linear, x, which: u64, tape, d_y| {
        let dropout = masks.get(linear, which);
        linear_backward(linear, x, dropout, tape, d_y, grads)
    };
    let attn = &layer.self_attn;
    let mlp = &layer.mlp;

    // MLP: out = mid + down(silu(gate) · up).
    let normed = rms_norm(&layer.post_attention_layernorm, mid.clone());
    let [(gate, lg), (up, lu)] = gate_up.unwrap_or_else(|| {
        let forward = |proj: &Linear, which| linear_forward(proj, &normed, masks.get(proj, which));
        [forward(&mlp.gate_proj, 4), forward(&mlp.up_proj, 5)]
    });
    let act = silu_mul(&gate, &up);
    let d_act = linear(&mlp.down_proj, act, 6, ld, d_out.clone());
    let (d_gate, d_up) = silu_mul_backward(gate, up, d_act);
    let d_normed = linear(&mlp.gate_proj, normed.clone(), 4, lg, d_gate);
    let d_normed = add(d_normed, &linear(&mlp.up_proj, normed, 5, lu, d_up));
    let d_mid = rms_norm_backward(&layer.post_attention_layernorm, mid, d_normed);
    let d_mid = add(d_mid, &d_out);

    // Attention: mid = input + o(attention(rope(q(x)), rope(k(x)), v(x))).
    let d_attended = linear(&attn.o_proj, attended, 3, lo, d_mid.clone());
    let d_heads = to_heads(d_attended, &pass.shape, attn.num_heads, attn.head_dim);
    let (d_queries, d_keys, d_values) =
        attention_backward(attn, &queries, &keys, &values, &pass.key_mask, d_heads);
    let d_q = head_norm_backward(
        attn.q_norm.as_ref(),
        q_raw,
        unrotate_from_heads(d_queries, &pass.rope),
    );
    let d_k = head_norm_backward(
        attn.k_norm.as_ref(),
        k_raw,
        unrotate_from_heads(d_keys, &pass.rope),
    );
    let d_v = from_heads(d_values);
    let normed = rms_norm(&layer.input_layernorm, input.clone());
    let d_normed = linear(&attn.q_proj, normed.clone(), 0, lq, d_q);
    let d_normed = add(d_normed, &linear(&attn.k_proj, normed.clone(), 1, lk, d_k));
    let d_normed = add(d_normed, &linear(&attn.v_proj, normed, 2, lv, d_v));
    add(
        rms_norm_backward(&layer.input_layernorm, input, d_normed),
        &d_mid,
    )
}

/// `x` `[n, heads · head_dim]` with each head RMS-normed by `norm` (Qwen3's q/k norms), and
/// `x` itself for the backward pass; `x` unchanged without a norm.
pub(crate) fn head_norm(
    norm: Option<&RmsNorm>,
    x: Tensor<2>,
    head_dim: usize,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let Some(norm) = norm else { return (x, None) };
    let [n, width] = x.dims();
    let normed = rms_norm(norm, x.clone().reshape([n * width / head_dim, head_dim]));
    (normed.reshape([n, width]), Some(x))
}

/// The gradient of [`head_norm`] with respect to its input `x`, given `d_y`.
fn head_norm_backward(norm: Option<&RmsNorm>, x: Option<Tensor<2>>, d_y: Tensor<2>) -> Tensor<2> {
    let (Some(norm), Some(x)) = (norm, x) else {
        return d_y;
    };
    let [n, width] = x.dims();
    let head_dim = norm.weight.dims()[0];
    let heads = [n * width / head_dim, head_dim];
    rms_norm_backward(norm, x.reshape(heads), d_y.reshape(heads)).reshape([n, width])
}

/// The label each position predicts (the next token's), [`IGNORE_INDEX`] at the end of a row.
pub(crate) fn shifted_targets(batch: &Batch) -> Vec<i64> {
    let len = batch.len;
    (0..batch.rows * len)
        .map(|k| match (k + 1) % len {
            0 => IGNORE_INDEX,
            _ => batch.labels[k + 1],
        })
        .collect()
}
