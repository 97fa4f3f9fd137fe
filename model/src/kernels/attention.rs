//! Causal attention of the training pass over host tensors (flex, LibTorch's CPU): per
//! sequence and key/value head, each block of queries against its causal horizon through
//! `gemm` and the fused softmax kernels, with the probabilities recomputed in the backward
//! pass. The blocks and formulas are those of the Burn version in `train/src/pass/ops/`; here the
//! key/value heads are shared by index instead of being repeated per query head, and no block
//! is cut out of, padded or concatenated into a larger tensor.

use rayon::prelude::*;

use super::cpu::{masked_softmax_row, softmax_backward_row, zeros};
use super::matmul::{Operand, Read, gemm_into};

/// The shape of one attention: tensors are `[rows, heads, len, head_dim]` (queries and the
/// output) or `[rows, kv_heads, len, head_dim]` (keys and values), row-major.
pub struct AttentionShape {
    /// Sequences.
    pub rows: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` consecutive query heads.
    pub kv_heads: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Queries per block.
    pub block: usize,
    /// Sliding window: query `i` sees keys `j > i − window` only; `None` for full attention.
    pub window: Option<usize>,
}

impl AttentionShape {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Values of one head of one sequence.
    fn head_len(&self) -> usize {
        self.len * self.head_dim
    }

    /// The query blocks `[start, end)`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.len)
            .step_by(self.block)
            .map(|start| (start, (start + self.block).min(self.len)))
    }
}

/// The attention output `[rows, heads, len, head_dim]` of `queries`, `keys` and `values`;
/// `segments` (`rows · len`) restricts each token to keys of its own segment.
pub fn forward(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    segments: &[i64],
    shape: &AttentionShape,
    scale: f32,
) -> Vec<f32> {
    let head_len = shape.head_len();
    let mut out = zeros(shape.rows * shape.heads * head_len);
    out.par_chunks_mut(shape.groups() * head_len)
        .enumerate()
        .for_each(|(task, out)| {
            let heads = Heads::new(task, queries, keys, values, segments, shape);
            let mut probs = vec![0.0; shape.block * shape.len];
            for (group, out) in out.chunks_mut(head_len).enumerate() {
                let query = heads.query(group);
                for (start, end) in shape.blocks() {
                    let probs = &mut probs[..(end - start) * end];
                    heads.probs(query, (start, end), scale, probs);
                    gemm_into(
                        &mut out[start * shape.head_dim..end * shape.head_dim],
                        shape.head_dim,
                        false,
                        Operand::dense(probs, [end - start, end], Read::AsIs),
                        heads.rows(heads.value, 0, end),
                        1.0,
                        false,
                    );
                }
            }
        });
    out
}

/// Gradients of [`forward`] with respect to queries, keys and values, given the output's
/// gradient `d_out` (same layouts as the inputs).
pub fn backward(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    segments: &[i64],
    d_out: &[f32],
    shape: &AttentionShape,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let head_len = shape.head_len();
    let d = shape.head_dim;
    let mut d_queries = zeros(shape.rows * shape.heads * head_len);
    let mut d_keys = zeros(shape.rows * shape.kv_heads * head_len);
    let mut d_values = zeros(shape.rows * shape.kv_heads * head_len);
    d_queries
        .par_chunks_mut(shape.groups() * head_len)
        .zip(d_keys.par_chunks_mut(head_len))
        .zip(d_values.par_chunks_mut(head_len))
        .enumerate()
        .for_each(|(task, ((d_query, d_key), d_value))| {
            let heads = Heads::new(task, queries, keys, values, segments, shape);
            let d_out = &d_out[task * shape.groups() * head_len..][..shape.groups() * head_len];
            let mut probs = vec![0.0; shape.block * shape.len];
            let mut d_probs = vec![0.0; shape.block * shape.len];
            for (group, d_query) in d_query.chunks_mut(head_len).enumerate() {
                let query = heads.query(group);
                let d_out = &d_out[group * head_len..][..head_len];
                for (start, end) in shape.blocks() {
                    let rows = end - start;
                    let probs = &mut probs[..rows * end];
                    let d_probs = &mut d_probs[..rows * end];
                    heads.probs(query, (start, end), scale, probs);
                    let d_block = Operand::dense(&d_out[start * d..end * d], [rows, d], Read::AsIs);
                    // dV += Pᵀ dO
                    let p_t = Operand::dense(probs, [rows, end], Read::Transposed);
                    gemm_into(&mut d_value[..end * d], d, true, p_t, d_block, 1.0, false);
                    // dP = dO Vᵀ
                    let v_t = Operand::dense(&heads.value[..end * d], [end, d], Read::Transposed);
                    gemm_into(d_probs, end, false, d_block, v_t, 1.0, false);
                    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), into `probs`.
                    for (p, dp) in probs.chunks_mut(end).zip(d_probs.chunks(end)) {
                        softmax_backward_row(p, dp, scale);
                    }
                    // dQ = dS K, dK += dSᵀ Q
                    let d_scores = Operand::dense(probs, [rows, end], Read::AsIs);
                    let d_query_block = &mut d_query[start * d..end * d];
                    let keys = heads.rows(heads.key, 0, end);
                    gemm_into(d_query_block, d, false, d_scores, keys, 1.0, false);
                    let d_scores_t = Operand::dense(probs, [rows, end], Read::Transposed);
                    let query_block = heads.rows(query, start, end);
                    gemm_into(
                        &mut d_key[..end * d],
                        d,
                        true,
                        d_scores_t,
                        query_block,
                        1.0,
                        false,
                    );
                }
            }
        });
    (d_queries, d_keys, d_values)
}

/// One parallel task's share: one sequence and one key/value head with its query heads.
struct Heads<'a> {
    queries: &'a [f32],
    key: &'a [f32],
    value: &'a [f32],
    segments: &'a [i64],
    shape: &'a AttentionShape,
}

impl<'a> Heads<'a> {
    /// Task `task` = `row · kv_heads + kv_head`.
    fn new(
        task: usize,
        queries: &'a [f32],
        keys: &'a [f32],
        values: &'a [f32],
        segments: &'a [i64],
        shape: &'a AttentionShape,
    ) -> Self {
        let head_len = shape.head_len();
        let row = task / shape.kv_heads;
        let group_len = shape.groups() * head_len;
        Self {
            queries: &queries[task * group_len..][..group_len],
            key: &keys[task * head_len..][..head_len],
            value: &values[task * head_len..][..head_len],
            segments: &segments[row * shape.len..][..shape.len],
            shape,
        }
    }

    /// The queries of query head `group` of this key/value head.
    fn query(&self, group: usize) -> &'a [f32] {
        let head_len = self.shape.head_len();
        &self.queries[group * head_len..][..head_len]
    }

    /// Tokens `start..end` of one head's `[len, head_dim]` values.
    fn rows<'b>(&self, head: &'b [f32], start: usize, end: usize) -> Operand<'b> {
        let d = self.shape.head_dim;
        Operand::dense(&head[start * d..end * d], [end - start, d], Read::AsIs)
    }

    /// Into `probs` `[end − start, end]`: the masked softmax of `scale · q kᵀ` for queries
    /// `start..end` against keys `0..end`.
    fn probs(&self, query: &[f32], (start, end): (usize, usize), scale: f32, probs: &mut [f32]) {
        let d = self.shape.head_dim;
        let keys_t = Operand::dense(&self.key[..end * d], [end, d], Read::Transposed);
        gemm_into(
            probs,
            end,
            false,
            self.rows(query, start, end),
            keys_t,
            1.0,
            false,
        );
        for (i, row) in probs.chunks_mut(end).enumerate() {
            let query = start + i;
            let first_key = self
                .shape
                .window
                .map_or(0, |w| (query + 1).saturating_sub(w));
            masked_softmax_row(row, &self.segments[..end], (first_key, query), scale);
        }
    }
}
