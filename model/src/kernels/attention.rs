//! Causal attention of the training pass over host tensors (flex, LibTorch's CPU): per
//! sequence and key/value head, each block of queries against its causal horizon through
//! `gemm` and the fused softmax kernels, with the probabilities recomputed in the backward
//! pass. The blocks and formulas are those of the Burn version in `train/src/pass/ops/`; here the
//! key/value heads are shared by index instead of being repeated per query head, no block is
//! cut out of, padded or concatenated into a larger tensor, and a block's products start at the
//! first key any of its queries may see (packed rows: the start of the block's first example),
//! skipping keys the mask hides from the whole block.

use std::collections::HashMap;

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
                    let first = heads.first_key((start, end));
                    let probs = &mut probs[..(end - start) * (end - first)];
                    heads.probs(query, (start, end), first, scale, probs);
                    gemm_into(
                        &mut out[start * shape.head_dim..end * shape.head_dim],
                        shape.head_dim,
                        false,
                        Operand::dense(probs, [end - start, end - first], Read::AsIs),
                        heads.rows(heads.value, first, end),
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
                    let first = heads.first_key((start, end));
                    let (rows, keys) = (end - start, end - first);
                    let probs = &mut probs[..rows * keys];
                    let d_probs = &mut d_probs[..rows * keys];
                    heads.probs(query, (start, end), first, scale, probs);
                    let d_block = Operand::dense(&d_out[start * d..end * d], [rows, d], Read::AsIs);
                    // dV += Pᵀ dO
                    let p_t = Operand::dense(probs, [rows, keys], Read::Transposed);
                    let d_value = &mut d_value[first * d..end * d];
                    gemm_into(d_value, d, true, p_t, d_block, 1.0, false);
                    // dP = dO Vᵀ
                    let v_t = Operand::dense(
                        &heads.value[first * d..end * d],
                        [keys, d],
                        Read::Transposed,
                    );
                    gemm_into(d_probs, keys, false, d_block, v_t, 1.0, false);
                    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), into `probs`.
                    for (p, dp) in probs.chunks_mut(keys).zip(d_probs.chunks(keys)) {
                        softmax_backward_row(p, dp, scale);
                    }
                    // dQ = dS K, dK += dSᵀ Q
                    let d_scores = Operand::dense(probs, [rows, keys], Read::AsIs);
                    let d_query_block = &mut d_query[start * d..end * d];
                    let block_keys = heads.rows(heads.key, first, end);
                    gemm_into(d_query_block, d, false, d_scores, block_keys, 1.0, false);
                    let d_scores_t = Operand::dense(probs, [rows, keys], Read::Transposed);
                    let query_block = heads.rows(query, start, end);
                    gemm_into(
                        &mut d_key[first * d..end * d],
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
    /// For each token of the sequence, the first token of its segment.
    segment_starts: Vec<usize>,
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
        let segments = &segments[row * shape.len..][..shape.len];
        Self {
            queries: &queries[task * group_len..][..group_len],
            key: &keys[task * head_len..][..head_len],
            value: &values[task * head_len..][..head_len],
            segments,
            segment_starts: segment_starts(segments),
            shape,
        }
    }

    /// The first key a query of `start..end` may see: the earliest first token of their
    /// segments inside their sliding windows. The mask hides every key before it from the
    /// whole block.
    fn first_key(&self, (start, end): (usize, usize)) -> usize {
        (start..end)
            .map(|query| self.segment_starts[query].max(self.window_start(query)))
            .min()
            .unwrap_or(start)
    }

    /// The first key query `query`'s sliding window reaches (0 without a window).
    fn window_start(&self, query: usize) -> usize {
        self.shape
            .window
            .map_or(0, |window| (query + 1).saturating_sub(window))
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

    /// Into `probs` `[end − start, end − first]`: the masked softmax of `scale · q kᵀ` for
    /// queries `start..end` against keys `first..end` (`first` ≤ [`Self::first_key`]).
    fn probs(
        &self,
        query: &[f32],
        (start, end): (usize, usize),
        first: usize,
        scale: f32,
        probs: &mut [f32],
    ) {
        let (d, keys) = (self.shape.head_dim, end - first);
        let keys_t = Operand::dense(&self.key[first * d..end * d], [keys, d], Read::Transposed);
        gemm_into(
            probs,
            keys,
            false,
            self.rows(query, start, end),
            keys_t,
            1.0,
            false,
        );
        for (i, row) in probs.chunks_mut(keys).enumerate() {
            let query = start + i;
            let visible = (
                self.window_start(query).saturating_sub(first),
                query - first,
            );
            masked_softmax_row(row, &self.segments[first..end], visible, scale);
        }
    }
}

/// For each token, the first token with its segment id.
fn segment_starts(segments: &[i64]) -> Vec<usize> {
    let mut first = HashMap::new();
    segments
        .iter()
        .enumerate()
        .map(|(token, segment)| *first.entry(*segment).or_insert(token))
        .collect()
}
