//! Causal attention over packed rows and its gradients, in blocks of queries against their
//! causal horizon. On host tensors `kernels::attention` runs it with each token restricted to
//! its segment; elsewhere Burn operations run it with a `0`/`-∞` bias in the softmax, the key
//! and value heads repeated per query head. Which one a pass uses is fixed by its [`KeyMask`].

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_model::kernels::attention::{self as host_attention, AttentionShape};
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};
use feinschliff_model::llama::Attention;

/// Queries per block of causal attention (see [`query_blocks`]).
const QUERY_BLOCK: usize = 128;

/// Which keys each query may attend to.
pub enum KeyMask {
    /// Segment ids per token, `rows · len`, for the host attention (flex, LibTorch's CPU).
    Segments(Vec<i64>),
    /// `0`/`-∞` biases `[rows, 1, len, len]` for Burn's softmax (other devices), for the
    /// attentions the model has: full and, with a sliding window, windowed.
    Bias {
        /// Causal and segment mask, if a layer attends fully.
        full: Option<Box<Tensor<4>>>,
        /// The same with keys out of the sliding window masked too, if a layer slides.
        windowed: Option<Box<Tensor<4>>>,
    },
}

impl KeyMask {
    /// The mask of `[rows, len]` tokens in `segments` (segment ids, `rows · len`) for
    /// attention on `device`: segments in host memory, biases elsewhere. `windows` are the
    /// sliding windows of the model's layers (`None` for a layer that attends fully).
    pub fn new(
        segments: &[i64],
        [rows, len]: [usize; 2],
        windows: &[Option<usize>],
        device: &Device,
    ) -> Self {
        let bias = |window| Box::new(attention_bias(segments, [rows, len], window, device));
        match is_host(device) {
            true => KeyMask::Segments(segments.to_vec()),
            false => KeyMask::Bias {
                full: windows.contains(&None).then(|| bias(None)),
                windowed: windows.iter().flatten().next().map(|&w| bias(Some(w))),
            },
        }
    }

    /// The bias of a Burn attention with sliding window `window`.
    fn bias(&self, window: Option<usize>) -> &Tensor<4> {
        let bias = match (self, window) {
            (KeyMask::Bias { full, .. }, None) => full,
            (KeyMask::Bias { windowed, .. }, Some(_)) => windowed,
            (KeyMask::Segments(_), _) => unreachable!("host attention has no bias"),
        };
        bias.as_ref()
            .expect("a bias for every kind of layer the mask was made for")
    }
}

/// `[rows, 1, len, len]`: `0` where query `i` may attend to key `j` (same segment, `j ≤ i`,
/// and `j > i − window` with a sliding window), `-∞` elsewhere. A token always sees itself,
/// so no row is fully masked.
fn attention_bias(
    segments: &[i64],
    [rows, len]: [usize; 2],
    window: Option<usize>,
    device: &Device,
) -> Tensor<4> {
    let mut bias = vec![f32::NEG_INFINITY; rows * len * len];
    for r in 0..rows {
        let segments = &segments[r * len..(r + 1) * len];
        for i in 0..len {
            let row = &mut bias[(r * len + i) * len..(r * len + i + 1) * len];
            let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
            for j in first..=i {
                if segments[j] == segments[i] {
                    row[j] = 0.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [rows, 1, len, len]), device)
}

/// The heads of one attention: `heads` query heads of width `head_dim` sharing `kv_heads`
/// key/value heads.
#[derive(Clone, Copy)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Heads {
    fn of(attn: &Attention) -> Self {
        Self {
            heads: attn.num_heads,
            kv_heads: attn.num_kv_heads,
            head_dim: attn.head_dim,
            window: attn.sliding_window,
        }
    }
}

/// Causal attention over `[rows, heads, len, head_dim]` (keys and values per KV head).
pub fn attention_forward(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    key_mask: &KeyMask,
) -> Tensor<4> {
    let heads = Heads::of(attn);
    match key_mask {
        KeyMask::Segments(segments) => host_forward(heads, queries, keys, values, segments),
        bias => burn_forward(heads, queries, keys, values, bias.bias(heads.window)),
    }
}

/// [`attention_forward`] through [`host_attention::forward`].
fn host_forward(
    heads: Heads,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    segments: &[i64],
) -> Tensor<4> {
    let shape = host_attention_shape(heads, queries);
    let (q, k, v) = host_qkv(queries, keys, values);
    let scale = (heads.head_dim as f32).sqrt().recip();
    let out = host_attention::forward(q.values(), k.values(), v.values(), segments, &shape, scale);
    HostTensor::new_like(&q, out, q.dims()).into_tensor()
}

/// [`attention_forward`] in Burn operations.
fn burn_forward(
    heads: Heads,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    bias: &Tensor<4>,
) -> Tensor<4> {
    let len = queries.dims()[2];
    let keys = repeat_kv(heads, keys.clone());
    let values = repeat_kv(heads, values.clone());
    let blocks = query_blocks(len)
        .map(|block| {
            block_probs(heads, queries, &keys, bias, block)
                .matmul(values.clone().narrow(2, 0, block.1))
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// Gradients of attention with respect to (rotated) queries, keys and values, recomputing the
/// probabilities block by block: `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
/// `dQ = s·dS K`, `dK = s·dSᵀ Q`.
pub fn attention_backward(
    attn: &Attention,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    key_mask: &KeyMask,
    d_out: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let heads = Heads::of(attn);
    match key_mask {
        KeyMask::Segments(segments) => host_backward(heads, queries, keys, values, segments, d_out),
        bias => burn_backward(heads, queries, keys, values, bias.bias(heads.window), d_out),
    }
}

/// [`attention_backward`] through [`host_attention::backward`].
fn host_backward(
    heads: Heads,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    segments: &[i64],
    d_out: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let shape = host_attention_shape(heads, queries);
    let (q, k, v) = host_qkv(queries, keys, values);
    let d_out = HostTensor::of(d_out);
    let scale = (heads.head_dim as f32).sqrt().recip();
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

/// [`attention_backward`] in Burn operations.
fn burn_backward(
    heads: Heads,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    bias: &Tensor<4>,
    d_out: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let scale = (heads.head_dim as f64).sqrt().recip();
    let len = queries.dims()[2];
    let keys = repeat_kv(heads, keys.clone());
    let values = repeat_kv(heads, values.clone());
    let mut d_queries = Vec::new();
    let mut d_keys: Option<Tensor<4>> = None;
    let mut d_values: Option<Tensor<4>> = None;
    let accumulate = |sum: Option<Tensor<4>>, part: Tensor<4>| match sum {
        Some(sum) => Some(sum + pad_to(part, len)),
        None => Some(pad_to(part, len)),
    };
    for block in query_blocks(len) {
        let (start, end) = block;
        let probs = block_probs(heads, queries, &keys, bias, block);
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
    let d_keys = sum_groups(heads, d_keys.expect("at least one block"));
    let d_values = sum_groups(heads, d_values.expect("at least one block"));
    (Tensor::cat(d_queries, 2), d_keys, d_values)
}

/// The shape of `heads` over `queries` `[rows, heads, len, head_dim]`, in blocks of
/// [`QUERY_BLOCK`] like the Burn version.
fn host_attention_shape(heads: Heads, queries: &Tensor<4>) -> AttentionShape {
    let [rows, query_heads, len, head_dim] = queries.dims();
    AttentionShape {
        rows,
        heads: query_heads,
        kv_heads: heads.kv_heads,
        len,
        head_dim,
        block: QUERY_BLOCK,
        window: heads.window,
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

/// Key/value heads repeated for the query heads that share them.
fn repeat_kv(heads: Heads, x: Tensor<4>) -> Tensor<4> {
    let groups = heads.heads / heads.kv_heads;
    if groups == 1 {
        return x;
    }
    let [rows, kv_heads, len, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([rows, kv_heads, groups, len, head_dim])
        .reshape([rows, kv_heads * groups, len, head_dim])
}

/// The gradient of [`repeat_kv`]: the query heads' gradients summed per key/value head.
fn sum_groups(heads: Heads, x: Tensor<4>) -> Tensor<4> {
    let groups = heads.heads / heads.kv_heads;
    if groups == 1 {
        return x;
    }
    let [rows, _, len, head_dim] = x.dims();
    x.reshape([rows, heads.kv_heads, groups, len, head_dim])
        .sum_dim(2)
        .reshape([rows, heads.kv_heads, len, head_dim])
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
    heads: Heads,
    queries: &Tensor<4>,
    keys: &Tensor<4>,
    bias: &Tensor<4>,
    (start, end): (usize, usize),
) -> Tensor<4> {
    let scale = (heads.head_dim as f64).sqrt().recip();
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

/// `x` `[rows, heads, n, head_dim]` padded with zero rows to length `len` (dimension 2).
fn pad_to(x: Tensor<4>, len: usize) -> Tensor<4> {
    let [rows, heads, n, head_dim] = x.dims();
    if n == len {
        return x;
    }
    let zeros = Tensor::zeros([rows, heads, len - n, head_dim], &x.device());
    Tensor::cat(vec![x, zeros], 2)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, device, random};

    /// Segments of two rows of `len` tokens: row 0 packs three examples; row 1 is one segment
    /// interrupted by another (ids packing never makes, but the mask's rule — same id — holds
    /// for them too: a query after the interruption sees the keys before it).
    fn segments(len: usize) -> Vec<i64> {
        let row_0 = (0..len).map(|i| (3 * i / len) as i64);
        let row_1 = (0..len).map(|i| i64::from(3 * len / 5 <= i && i < 4 * len / 5));
        row_0.chain(row_1).collect()
    }

    /// Both paths agree, forward and backward, on two rows of `len` tokens with `heads`.
    fn check(heads: Heads, len: usize) {
        let rows = 2;
        let segments = segments(len);
        let bias = attention_bias(&segments, [rows, len], heads.window, &device());
        let q_dims = [rows, heads.heads, len, heads.head_dim];
        let kv_dims = [rows, heads.kv_heads, len, heads.head_dim];
        let (q, k, v) = (random(1, q_dims), random(2, kv_dims), random(3, kv_dims));
        let d_out = random(4, q_dims);
        assert_close(
            "forward",
            host_forward(heads, &q, &k, &v, &segments),
            burn_forward(heads, &q, &k, &v, &bias),
            1e-5,
        );
        let host = host_backward(heads, &q, &k, &v, &segments, d_out.clone());
        let reference = burn_backward(heads, &q, &k, &v, &bias, d_out);
        assert_close("queries' gradient", host.0, reference.0, 1e-5);
        assert_close("keys' gradient", host.1, reference.1, 1e-5);
        assert_close("values' gradient", host.2, reference.2, 1e-5);
    }

    #[test]
    fn grouped_query_attention_agrees_with_burn() {
        let heads = Heads {
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            window: None,
        };
        check(heads, QUERY_BLOCK + 37);
    }

    #[test]
    fn multi_head_attention_agrees_with_burn() {
        let heads = Heads {
            heads: 3,
            kv_heads: 3,
            head_dim: 8,
            window: None,
        };
        check(heads, 29);
    }

    #[test]
    fn sliding_window_attention_agrees_with_burn() {
        let heads = Heads {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            window: Some(7),
        };
        check(heads, QUERY_BLOCK + 37);
    }

    #[test]
    fn the_mask_follows_the_device() {
        let mask = KeyMask::new(&segments(6), [2, 6], &[None, Some(3)], &device());
        assert!(matches!(mask, KeyMask::Segments(s) if s == segments(6)));
    }
}
