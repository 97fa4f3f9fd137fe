//! The training pass of a LoRA-adapted [`Llama`] with a hand-written backward pass.
//!
//! Burn's autodiff keeps every intermediate of the decomposed attention and of the
//! `[tokens, vocab]` log-softmax, and it allocates a graph node per operation. Here the forward
//! pass keeps only what the backward pass needs (per layer: its input, the rotated queries and
//! keys, the values, the attention output, the MLP's gate and up projections, and the adapters'
//! rank-`r` intermediates); attention probabilities are recomputed layer by layer in the
//! backward pass, dropout masks are rebuilt from their seeds, and the loss and its gradient are
//! computed in row chunks, so the full logits never exist. Gradients are computed only for the
//! adapters (the base is frozen), with the same formulas autodiff would use; the tests compare
//! both (`train/tests/backprop.rs`).
//!
//! All tensors here live on the device without autodiff. In host memory (flex, LibTorch's CPU)
//! the element-wise work and the attention run through our own kernels on the tensors' buffers
//! (`cpu_kernels`, `host_attention`), on flex the matrix products too (`host_matmul`; LibTorch
//! keeps its own, bf16 ones among them); on other devices everything is Burn operations.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use feinschliff_data::batch::{Batch, IGNORE_INDEX};

use super::llama::{Attention, DecoderLayer, Linear, Llama, RmsNorm};
use super::rope::Rope;
use crate::cpu_kernels::{self, RopeShape};
use crate::dropout_mask::{Dropout, child_seed};
use crate::host_attention::{self, AttentionShape};
use crate::host_matmul::{self, Read};
use crate::host_tensor::{HostTensor, is_flex, is_host};

/// Queries per block of causal attention (see [`query_blocks`]).
const QUERY_BLOCK: usize = 128;

/// Rows of the output head computed at once: `rows × vocab` floats of logits.
const HEAD_CHUNK_ROWS: usize = 256;

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
    device: &Device,
    grads: &mut AdapterGrads,
) -> MicroBatchResult {
    let started = std::time::Instant::now();
    let (rows, len) = (batch.rows, batch.len);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(batch.ids.clone(), [rows, len]), device);
    let positions = Tensor::<2, Int>::from_data(
        TensorData::new(batch.positions.clone(), [rows, len]),
        device,
    );
    let (cos, sin) = model.model.rope.cos_sin(positions);
    let rope = RopeTables {
        cos: cos.inner(),
        neg_sin: sin.clone().inner().neg(),
        sin: sin.inner(),
    };
    let key_mask = match is_host(device) {
        true => KeyMask::Segments(batch.segments.clone()),
        false => KeyMask::Bias(Box::new(attention_bias(batch, device))),
    };
    let pass = Pass {
        shape: Shape { rows, len },
        rope,
        key_mask,
    };

    let mut x = embedding_rows(
        model.model.embed_tokens.val().inner(),
        ids.reshape([rows * len]),
    );
    let mut tapes = Vec::with_capacity(model.model.layers.len());
    for (index, layer) in model.model.layers.iter().enumerate() {
        let masks = LayerMasks::new(child_seed(dropout_seed, index as u64));
        let (out, tape) = layer_forward(layer, x, &pass, &masks);
        tapes.push(tape);
        x = out;
    }
    let head = model.head_weight().inner();
    let normed = norm_forward(&model.model.norm, x.clone());
    let targets = shifted_targets(batch);
    let (loss, d_normed) = head_loss_backward(normed, head, &targets, loss_scale, device);
    let forward_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let mut dx = norm_backward(&model.model.norm, x, d_normed);
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
struct Pass {
    shape: Shape,
    rope: RopeTables,
    key_mask: KeyMask,
}

/// Rows and length of the batch (tokens are handled as `rows · len` flat rows).
struct Shape {
    rows: usize,
    len: usize,
}

/// RoPE tables `[rows, 1, len, head_dim]`; `neg_sin` undoes the rotation in the backward pass.
struct RopeTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    neg_sin: Tensor<4>,
}

/// Which keys each query may attend to.
enum KeyMask {
    /// Segment ids per token, `rows · len`, for the host attention (flex, LibTorch's CPU).
    Segments(Vec<i64>),
    /// `0`/`-∞` bias `[rows, 1, len, len]` for Burn's softmax (other devices).
    Bias(Box<Tensor<4>>),
}

/// Seeds of the seven adapters' dropout masks in one layer.
struct LayerMasks {
    seed: u64,
}

impl LayerMasks {
    fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The dropout for projection `which` (0 = q … 6 = down) of `linear`; `None` without an
    /// adapter or without dropout.
    fn get(&self, linear: &Linear, which: u64) -> Option<Dropout> {
        let adapter = linear.lora.as_ref()?;
        let prob = adapter.dropout.prob;
        (prob > 0.0).then(|| Dropout::new(child_seed(self.seed, which), prob))
    }
}

/// What one layer's backward pass needs from its forward pass.
struct LayerTape {
    input: Tensor<2>,
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    attended: Tensor<2>,
    mid: Tensor<2>,
    gate: Tensor<2>,
    up: Tensor<2>,
    /// `A · dropout(x)` of the seven adapters (q, k, v, o, gate, up, down).
    low_rank: [Option<Tensor<2>>; 7],
}

fn layer_forward(
    layer: &DecoderLayer,
    x: Tensor<2>,
    pass: &Pass,
    masks: &LayerMasks,
) -> (Tensor<2>, LayerTape) {
    let (shape, rope) = (&pass.shape, &pass.rope);
    let linear = |linear: &Linear, x: &Tensor<2>, which: u64| {
        linear_forward(linear, x, masks.get(linear, which))
    };
    let attn = &layer.self_attn;
    let normed = norm_forward(&layer.input_layernorm, x.clone());
    let (q, lq) = linear(&attn.q_proj, &normed, 0);
    let (k, lk) = linear(&attn.k_proj, &normed, 1);
    let (v, lv) = linear(&attn.v_proj, &normed, 2);
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
    let mid = x.clone() + o;

    let mlp = &layer.mlp;
    let normed = norm_forward(&layer.post_attention_layernorm, mid.clone());
    let (gate, lg) = linear(&mlp.gate_proj, &normed, 4);
    let (up, lu) = linear(&mlp.up_proj, &normed, 5);
    let act = silu_mul(&gate, &up);
    let (down, ld) = linear(&mlp.down_proj, &act, 6);
    let out = mid.clone() + down;
    let tape = LayerTape {
        input: x,
        queries,
        keys,
        values,
        attended,
        mid,
        gate,
        up,
        low_rank: [lq, lk, lv, lo, lg, lu, ld],
    };
    (out, tape)
}

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
        queries,
        keys,
        values,
        attended,
        mid,
        gate,
        up,
        low_rank: [lq, lk, lv, lo, lg, lu, ld],
    } = tape;
    let mut linear = |linear: &Linear, x, which: u64, low_rank, d_y| {
        let dropout = masks.get(linear, which);
        linear_backward(linear, x, dropout, low_rank, d_y, grads)
    };
    let attn = &layer.self_attn;
    let mlp = &layer.mlp;

    // MLP: out = mid + down(silu(gate) · up).
    let act = silu_mul(&gate, &up);
    let d_act = linear(&mlp.down_proj, act, 6, ld, d_out.clone());
    let (d_gate, d_up) = silu_mul_backward(gate, up, d_act);
    let normed = norm_forward(&layer.post_attention_layernorm, mid.clone());
    let d_normed = linear(&mlp.gate_proj, normed.clone(), 4, lg, d_gate)
        + linear(&mlp.up_proj, normed, 5, lu, d_up);
    let d_mid = d_out + norm_backward(&layer.post_attention_layernorm, mid, d_normed);

    // Attention: mid = input + o(attention(rope(q(x)), rope(k(x)), v(x))).
    let d_attended = linear(&attn.o_proj, attended, 3, lo, d_mid.clone());
    let d_heads = to_heads(d_attended, &pass.shape, attn.num_heads, attn.head_dim);
    let (d_queries, d_keys, d_values) =
        attention_backward(attn, &queries, &keys, &values, &pass.key_mask, d_heads);
    let d_q = unrotate_from_heads(d_queries, &pass.rope);
    let d_k = unrotate_from_heads(d_keys, &pass.rope);
    let d_v = from_heads(d_values);
    let normed = norm_forward(&layer.input_layernorm, input.clone());
    let d_normed = linear(&attn.q_proj, normed.clone(), 0, lq, d_q)
        + linear(&attn.k_proj, normed.clone(), 1, lk, d_k)
        + linear(&attn.v_proj, normed, 2, lv, d_v);
    d_mid + norm_backward(&layer.input_layernorm, input, d_normed)
}

/// `x Wᵀ + b` plus the adapter's `s · B A (x ⊙ mask)`; also returns `A (x ⊙ mask)` `[n, r]`.
fn linear_forward(
    linear: &Linear,
    x: &Tensor<2>,
    dropout: Option<Dropout>,
) -> (Tensor<2>, Option<Tensor<2>>) {
    use Read::{AsIs, Transposed};
    let weight = linear.product_weight().inner();
    let mut y = matmul(x.clone(), AsIs, weight, Transposed);
    if let Some(bias) = &linear.bias {
        y = y + bias.val().inner().unsqueeze::<2>();
    }
    let Some(adapter) = &linear.lora else {
        return (y, None);
    };
    let dropped = match dropout {
        Some(dropout) => dropout.apply(x.clone()),
        None => x.clone(),
    };
    let low_rank = matmul(dropped, AsIs, adapter.lora_a.val().inner(), Transposed);
    let y = add_matmul(
        y,
        low_rank.clone(),
        AsIs,
        adapter.lora_b.val().inner(),
        Transposed,
        adapter.scaling,
    );
    (y, Some(low_rank))
}

/// The gradient with respect to `x` of [`linear_forward`], given `d_y`; adds the adapter's
/// gradients to `grads`.
fn linear_backward(
    linear: &Linear,
    x: Tensor<2>,
    dropout: Option<Dropout>,
    low_rank: Option<Tensor<2>>,
    d_y: Tensor<2>,
    grads: &mut AdapterGrads,
) -> Tensor<2> {
    use Read::{AsIs, Transposed};
    let d_x = matmul(d_y.clone(), AsIs, linear.product_weight().inner(), AsIs);
    let (Some(adapter), Some(low_rank)) = (&linear.lora, low_rank) else {
        return d_x;
    };
    let scaling = adapter.scaling;
    let d_b = scaled_matmul(d_y.clone(), Transposed, low_rank, AsIs, scaling);
    let d_low = scaled_matmul(d_y, AsIs, adapter.lora_b.val().inner(), AsIs, scaling);
    let dropped = match &dropout {
        Some(dropout) => dropout.apply(x),
        None => x,
    };
    let d_a = matmul(d_low.clone(), Transposed, dropped, AsIs);
    grads.add(adapter.lora_a.id, d_a);
    grads.add(adapter.lora_b.id, d_b);
    match dropout {
        Some(dropout) => {
            d_x + dropout.apply(matmul(d_low, AsIs, adapter.lora_a.val().inner(), AsIs))
        }
        None => add_matmul(d_x, d_low, AsIs, adapter.lora_a.val().inner(), AsIs, 1.0),
    }
}

/// `op(a) · op(b)`; see [`scaled_matmul`].
fn matmul(a: Tensor<2>, read_a: Read, b: Tensor<2>, read_b: Read) -> Tensor<2> {
    scaled_matmul(a, read_a, b, read_b, 1.0)
}

/// `scale · op(a) · op(b)` with `a` in f32, computed in `b`'s dtype (bf16 for a frozen base
/// on LibTorch; always f32 on host tensors) and returned in f32.
fn scaled_matmul(a: Tensor<2>, read_a: Read, b: Tensor<2>, read_b: Read, scale: f64) -> Tensor<2> {
    if is_flex(&a.device()) {
        let (a, b) = (HostTensor::of(a), HostTensor::of(b));
        return host_matmul::matmul(&a, read_a, &b, read_b, scale as f32).into_tensor();
    }
    let dtype = b.dtype();
    let product = read(a.cast(dtype), read_a)
        .matmul(read(b, read_b))
        .cast(DType::F32);
    match scale == 1.0 {
        true => product,
        false => product.mul_scalar(scale),
    }
}

/// `acc + scale · op(a) · op(b)`, added in place on host tensors; see [`scaled_matmul`].
fn add_matmul(
    acc: Tensor<2>,
    a: Tensor<2>,
    read_a: Read,
    b: Tensor<2>,
    read_b: Read,
    scale: f64,
) -> Tensor<2> {
    if is_flex(&acc.device()) {
        let mut acc = HostTensor::of(acc);
        let (a, b) = (HostTensor::of(a), HostTensor::of(b));
        host_matmul::matmul_add(&mut acc, &a, read_a, &b, read_b, scale as f32);
        return acc.into_tensor();
    }
    acc + scaled_matmul(a, read_a, b, read_b, scale)
}

/// `matrix` read as `how`.
fn read(matrix: Tensor<2>, how: Read) -> Tensor<2> {
    match how {
        Read::AsIs => matrix,
        Read::Transposed => matrix.transpose(),
    }
}

/// Rows `ids` of the (possibly bf16) matrix `table`, in f32.
fn embedding_rows(table: Tensor<2>, ids: Tensor<1, Int>) -> Tensor<2> {
    table.select(0, ids).cast(DType::F32)
}

/// RMSNorm over the last dimension of `[n, hidden]`.
fn norm_forward(norm: &RmsNorm, x: Tensor<2>) -> Tensor<2> {
    let weight = norm.weight.val().inner();
    if is_host(&x.device()) {
        let (x, weight) = (HostTensor::of(x), HostTensor::of(weight));
        let mut out = cpu_kernels::zeros(x.values().len());
        cpu_kernels::rms_norm(x.values(), weight.values(), norm.eps as f32, &mut out);
        return HostTensor::new_like(&x, out, x.dims()).into_tensor();
    }
    let inv_rms = (x.clone().square().mean_dim(1) + norm.eps).sqrt().recip();
    x * inv_rms * weight.unsqueeze::<2>()
}

/// The gradient of [`norm_forward`] with respect to `x`: with `g = d_y ⊙ w` and
/// `r = 1/rms(x)`, `d_x = r·g − x·r³·mean(g ⊙ x)`.
fn norm_backward(norm: &RmsNorm, x: Tensor<2>, d_y: Tensor<2>) -> Tensor<2> {
    if is_host(&x.device()) {
        let (x, weight) = (HostTensor::of(x), HostTensor::of(norm.weight.val().inner()));
        let mut d = HostTensor::of(d_y);
        cpu_kernels::rms_norm_backward(
            x.values(),
            weight.values(),
            norm.eps as f32,
            d.values_mut(),
        );
        return d.into_tensor();
    }
    let inv_rms = (x.clone().square().mean_dim(1) + norm.eps).sqrt().recip();
    let g = d_y * norm.weight.val().inner().unsqueeze::<2>();
    let projection = (g.clone() * x.clone()).mean_dim(1);
    g * inv_rms.clone() - x * (inv_rms.powi_scalar(3) * projection)
}

/// `silu(gate) ⊙ up`, the MLP's activation.
fn silu_mul(gate: &Tensor<2>, up: &Tensor<2>) -> Tensor<2> {
    if is_host(&gate.device()) {
        let (gate, up) = (HostTensor::of(gate.clone()), HostTensor::of(up.clone()));
        let mut out = cpu_kernels::zeros(gate.values().len());
        cpu_kernels::silu_mul(gate.values(), up.values(), &mut out);
        return HostTensor::new_like(&gate, out, gate.dims()).into_tensor();
    }
    silu(gate.clone()) * up.clone()
}

/// The gradients of [`silu_mul`] with respect to `gate` and `up`, given `d_act`.
fn silu_mul_backward(gate: Tensor<2>, up: Tensor<2>, d_act: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    if is_host(&gate.device()) {
        let (mut gate, mut up) = (HostTensor::of(gate), HostTensor::of(up));
        let d_act = HostTensor::of(d_act);
        cpu_kernels::silu_mul_backward(gate.values_mut(), up.values_mut(), d_act.values());
        return (gate.into_tensor(), up.into_tensor());
    }
    let sig = sigmoid(gate.clone());
    let d_up = d_act.clone() * silu(gate.clone());
    let d_gate = d_act * up * sig.clone() * (gate * (sig.neg() + 1.0) + 1.0);
    (d_gate, d_up)
}

/// `x` `[rows·len, heads·head_dim]` split into heads `[rows, heads, len, head_dim]` and
/// rotated by RoPE.
fn rotate_to_heads(
    x: Tensor<2>,
    shape: &Shape,
    heads: usize,
    head_dim: usize,
    rope: &RopeTables,
) -> Tensor<4> {
    if !is_host(&x.device()) {
        return Rope::apply(to_heads(x, shape, heads, head_dim), &rope.cos, &rope.sin);
    }
    let (rows, len) = (shape.rows, shape.len);
    let rope_shape = RopeShape {
        rows,
        len,
        heads,
        head_dim,
    };
    let dims = [rows, heads, len, head_dim];
    host_rope(
        cpu_kernels::rope_to_heads,
        x,
        &rope.cos,
        &rope.sin,
        rope_shape,
        dims,
    )
}

/// The gradient of [`rotate_to_heads`]: `d` `[rows, heads, len, head_dim]` rotated back and
/// merged to `[rows·len, heads·head_dim]`.
fn unrotate_from_heads(d: Tensor<4>, rope: &RopeTables) -> Tensor<2> {
    if !is_host(&d.device()) {
        return from_heads(Rope::apply(d, &rope.cos, &rope.neg_sin));
    }
    let [rows, heads, len, head_dim] = d.dims();
    let rope_shape = RopeShape {
        rows,
        len,
        heads,
        head_dim,
    };
    let dims = [rows * len, heads * head_dim];
    host_rope(
        cpu_kernels::rope_from_heads,
        d,
        &rope.cos,
        &rope.neg_sin,
        rope_shape,
        dims,
    )
}

/// [`cpu_kernels::rope_to_heads`] or [`cpu_kernels::rope_from_heads`].
type RopeKernel = fn(&[f32], &[f32], &[f32], &RopeShape, &mut [f32]);

/// A RoPE kernel of [`cpu_kernels`] run on host tensor `x` with the tables `cos` and `sin`;
/// the result has `dims`.
fn host_rope<const D: usize, const E: usize>(
    kernel: RopeKernel,
    x: Tensor<D>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    shape: RopeShape,
    dims: [usize; E],
) -> Tensor<E> {
    let x = HostTensor::of(x);
    let (cos, sin) = (HostTensor::of(cos.clone()), HostTensor::of(sin.clone()));
    let mut out = cpu_kernels::zeros(x.values().len());
    kernel(x.values(), cos.values(), sin.values(), &shape, &mut out);
    HostTensor::new_like(&x, out, dims).into_tensor()
}

/// `[rows·len, heads·head_dim]` → `[rows, heads, len, head_dim]`.
fn to_heads(x: Tensor<2>, shape: &Shape, heads: usize, head_dim: usize) -> Tensor<4> {
    x.reshape([shape.rows, shape.len, heads, head_dim])
        .swap_dims(1, 2)
}

/// `[rows, heads, len, head_dim]` → `[rows·len, heads·head_dim]`.
fn from_heads(x: Tensor<4>) -> Tensor<2> {
    let [rows, heads, len, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([rows * len, heads * head_dim])
}

/// Key/value heads repeated for the query heads that share them.
fn repeat_kv(attn: &Attention, x: Tensor<4>) -> Tensor<4> {
    let groups = attn.num_heads / attn.num_kv_heads;
    if groups == 1 {
        return x;
    }
    let [rows, kv_heads, len, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([rows, kv_heads, groups, len, head_dim])
        .reshape([rows, kv_heads * groups, len, head_dim])
}

/// The gradient of [`repeat_kv`]: the query heads' gradients summed per key/value head.
fn sum_groups(attn: &Attention, x: Tensor<4>) -> Tensor<4> {
    let groups = attn.num_heads / attn.num_kv_heads;
    if groups == 1 {
        return x;
    }
    let [rows, _, len, head_dim] = x.dims();
    x.reshape([rows, attn.num_kv_heads, groups, len, head_dim])
        .sum_dim(2)
        .reshape([rows, attn.num_kv_heads, len, head_dim])
}

/// The query blocks of causal attention: block `[start, end)` needs keys `0..end` only, so
/// the products and softmaxes skip most of the masked upper triangle (with blocks of 128 at
/// length 512, 62.5 % of the full square is computed).
fn query_blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(QUERY_BLOCK)
        .map(move |start| (start, (start + QUERY_BLOCK).min(len)))
}

/// Softmax of the scaled scores of queries `start..end` against keys `0..end` plus the mask
/// (`0` or `-∞`), `[rows, heads, end − start, end]`; `keys` already repeated per query head.
fn block_probs(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    bias: &Tensor<4>,
    (start, end): (usize, usize),
) -> Tensor<4> {
    let scale = (attn.head_dim as f64).sqrt().recip();
    let scores = queries
        .clone()
        .narrow(2, start, end - start)
        .matmul(keys.clone().narrow(2, 0, end).swap_dims(2, 3));
    let bias = bias.clone().narrow(2, start, end - start).narrow(3, 0, end);
    softmax(scores.mul_scalar(scale) + bias, 3)
}

/// The softmax's backward pass: `scale · P ⊙ (dP − rowsum(P ⊙ dP))` (`scale` folds in the
/// scores' scaling).
fn softmax_backward(probs: Tensor<4>, d_probs: Tensor<4>, scale: f64) -> Tensor<4> {
    let row_dot = (probs.clone() * d_probs.clone()).sum_dim(3);
    (probs * (d_probs - row_dot)).mul_scalar(scale)
}

/// Causal attention over `[rows, heads, len, head_dim]` (keys and values per KV head).
fn attention_forward(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    key_mask: &KeyMask,
) -> Tensor<4> {
    let bias = match key_mask {
        KeyMask::Bias(bias) => bias,
        KeyMask::Segments(segments) => {
            let shape = host_attention_shape(attn, queries);
            let (q, k, v) = host_qkv(queries, keys, values);
            let scale = (attn.head_dim as f32).sqrt().recip();
            let out = host_attention::forward(
                q.values(),
                k.values(),
                v.values(),
                segments,
                &shape,
                scale,
            );
            return HostTensor::new_like(&q, out, q.dims()).into_tensor();
        }
    };
    let len = queries.dims()[2];
    let keys = repeat_kv(attn, keys.clone());
    let values = repeat_kv(attn, values.clone());
    let blocks = query_blocks(len)
        .map(|block| {
            block_probs(attn, queries, &keys, bias, block)
                .matmul(values.clone().narrow(2, 0, block.1))
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// [`attention_backward`] on host tensors.
fn host_attention_backward(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    segments: &[i64],
    d_out: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let shape = host_attention_shape(attn, queries);
    let (q, k, v) = host_qkv(queries, keys, values);
    let d_out = HostTensor::of(d_out);
    let scale = (attn.head_dim as f32).sqrt().recip();
    let (d_q, d_k, d_v) = host_attention::backward(
        q.values(),
        k.values(),
        v.values(),
        segments,
        d_out.values(),
        &shape,
        scale,
    );
    (
        HostTensor::new_like(&q, d_q, q.dims()).into_tensor(),
        HostTensor::new_like(&q, d_k, k.dims()).into_tensor(),
        HostTensor::new_like(&q, d_v, v.dims()).into_tensor(),
    )
}

/// The shape of `attn` over `queries` `[rows, heads, len, head_dim]`, in blocks of
/// [`QUERY_BLOCK`] like the Burn version.
fn host_attention_shape(attn: &Attention, queries: &Tensor<4>) -> AttentionShape {
    let [rows, heads, len, head_dim] = queries.dims();
    AttentionShape {
        rows,
        heads,
        kv_heads: attn.num_kv_heads,
        len,
        head_dim,
        block: QUERY_BLOCK,
    }
}

/// Host views of queries, keys and values (contiguous; copied only where they are not).
fn host_qkv(
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
) -> (HostTensor<4>, HostTensor<4>, HostTensor<4>) {
    (
        HostTensor::of(queries.clone()),
        HostTensor::of(keys.clone()),
        HostTensor::of(values.clone()),
    )
}

/// `x` `[rows, heads, n, head_dim]` padded with zero rows to length `len` (dimension 2).
fn pad_to(x: Tensor<4>, len: usize) -> Tensor<4> {
    let [rows, heads, n, head_dim] = x.dims();
    if n == len {
        return x;
    }
    let zeros = Tensor::zeros([rows, heads, len - n, head_dim], &x.device());
    Tensor::cat(vec![x, zeros], 2)
}

/// Gradients of attention with respect to (rotated) queries, keys and values, recomputing the
/// probabilities block by block: `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = s·dS K`, `dK = s·dSᵀ Q`.
fn attention_backward(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    key_mask: &KeyMask,
    d_out: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let bias = match key_mask {
        KeyMask::Bias(bias) => bias,
        KeyMask::Segments(segments) => {
            return host_attention_backward(attn, queries, keys, values, segments, d_out);
        }
    };
    let scale = (attn.head_dim as f64).sqrt().recip();
    let len = queries.dims()[2];
    let keys = repeat_kv(attn, keys.clone());
    let values = repeat_kv(attn, values.clone());
    let mut d_queries = Vec::new();
    let mut d_keys: Option<Tensor<4>> = None;
    let mut d_values: Option<Tensor<4>> = None;
    let accumulate = |sum: Option<Tensor<4>>, part: Tensor<4>| match sum {
        Some(sum) => Some(sum + pad_to(part, len)),
        None => Some(pad_to(part, len)),
    };
    for block in query_blocks(len) {
        let (start, end) = block;
        let probs = block_probs(attn, queries, &keys, bias, block);
        let d_block = d_out.clone().narrow(2, start, end - start);
        let d_probs = d_block
            .clone()
            .matmul(values.clone().narrow(2, 0, end).swap_dims(2, 3));
        d_values = accumulate(d_values, probs.clone().swap_dims(2, 3).matmul(d_block));
        let d_scores = softmax_backward(probs, d_probs, scale);
        d_queries.push(d_scores.clone().matmul(keys.clone().narrow(2, 0, end)));
        let block_queries = queries.clone().narrow(2, start, end - start);
        d_keys = accumulate(d_keys, d_scores.swap_dims(2, 3).matmul(block_queries));
    }
    let d_keys = sum_groups(attn, d_keys.expect("at least one block"));
    let d_values = sum_groups(attn, d_values.expect("at least one block"));
    (Tensor::cat(d_queries, 2), d_keys, d_values)
}

/// `[rows, 1, len, len]`: `0` where query `i` may attend to key `j` (same segment, `j ≤ i`),
/// `-∞` elsewhere. A token always sees itself, so no row is fully masked.
fn attention_bias(batch: &Batch, device: &Device) -> Tensor<4> {
    let (rows, len) = (batch.rows, batch.len);
    let mut bias = vec![f32::NEG_INFINITY; rows * len * len];
    for r in 0..rows {
        let segments = &batch.segments[r * len..(r + 1) * len];
        for i in 0..len {
            let row = &mut bias[(r * len + i) * len..(r * len + i + 1) * len];
            for j in 0..=i {
                if segments[j] == segments[i] {
                    row[j] = 0.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [rows, 1, len, len]), device)
}

/// The label each position predicts (the next token's), [`IGNORE_INDEX`] at the end of a row.
fn shifted_targets(batch: &Batch) -> Vec<i64> {
    let len = batch.len;
    (0..batch.rows * len)
        .map(|k| match (k + 1) % len {
            0 => IGNORE_INDEX,
            _ => batch.labels[k + 1],
        })
        .collect()
}

/// Loss `scale · Σ nll` of the output head over `hidden` `[n, width]` and its gradient with
/// respect to `hidden`, `rows` at a time: `d_logits = scale · (softmax − onehot)` on scored
/// rows, so `d_hidden = (scale·p) W − scale · W[target]`.
fn head_loss_backward(
    hidden: Tensor<2>,
    head: Tensor<2>,
    targets: &[i64],
    scale: f64,
    device: &Device,
) -> (f64, Tensor<2>) {
    let [n, width] = hidden.dims();
    // Summed on the device and read once: a read per chunk would wait for the device each time.
    let mut loss = Tensor::<1>::zeros([1], device);
    let mut host_loss = 0.0f64;
    let mut d_hidden = Vec::with_capacity(n.div_ceil(HEAD_CHUNK_ROWS));
    for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
        let rows = HEAD_CHUNK_ROWS.min(n - start);
        let chunk_targets = &targets[start..start + rows];
        let weights: Vec<f32> = chunk_targets
            .iter()
            .map(|&t| if t == IGNORE_INDEX { 0.0 } else { scale as f32 })
            .collect();
        if weights.iter().all(|&w| w == 0.0) {
            d_hidden.push(Tensor::zeros([rows, width], device));
            continue;
        }
        let logits = matmul(
            hidden.clone().narrow(0, start, rows),
            Read::AsIs,
            head.clone(),
            Read::Transposed,
        );
        if is_host(device) {
            let mut logits = HostTensor::of(logits);
            let vocab = logits.dims()[1];
            let safe: Vec<usize> = chunk_targets.iter().map(|&t| t.max(0) as usize).collect();
            host_loss += cpu_kernels::cross_entropy(logits.values_mut(), vocab, &safe, &weights);
            d_hidden.push(matmul(
                logits.into_tensor(),
                Read::AsIs,
                head.clone(),
                Read::AsIs,
            ));
            continue;
        }
        let safe: Vec<i64> = chunk_targets.iter().map(|&t| t.max(0)).collect();
        let safe = Tensor::<1, Int>::from_data(TensorData::new(safe, [rows]), device);
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [rows, 1]), device);
        let max = logits.clone().max_dim(1);
        let exp = (logits.clone() - max.clone()).exp();
        let sum = exp.clone().sum_dim(1);
        let log_norm = max + sum.clone().log();
        let target_logits = logits.gather(1, safe.clone().reshape([rows, 1]));
        loss = loss + ((log_norm - target_logits) * weights.clone()).sum();
        let probs = exp * (weights.clone() / sum);
        let target_rows = embedding_rows(head.clone(), safe);
        d_hidden.push(matmul(probs, Read::AsIs, head.clone(), Read::AsIs) - target_rows * weights);
    }
    (
        loss.into_scalar::<f64>() + host_loss,
        Tensor::cat(d_hidden, 0),
    )
}
