//! Attention of new tokens against the keys and values of everything their sequence has seen
//! (a KV cache), for generation on host tensors: a prompt's tokens (prefill) or one token per
//! sequence (decoding). Each query head reads its key/value head by index (no repeated KV
//! heads), sees the keys up to its own position and inside the sliding window, and every
//! sequence keeps its own cache, so prompts of different lengths need no padding.

use rayon::prelude::*;

use super::cpu::{axpy, dot, softmax_row, zeros};

/// One sequence's rotated keys and its values so far, token-major: `[seen, kv_heads · head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct SequenceCache {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl SequenceCache {
    /// Appends tokens `tokens` of `keys` `[kv_heads, n, head_dim]` (head-major, as the rotation
    /// writes them) and of `values` `[n, kv_heads · head_dim]` (token-major).
    pub fn append(
        &mut self,
        keys: &[f32],
        values: &[f32],
        tokens: std::ops::Range<usize>,
        shape: &CacheShape,
    ) {
        let (d, width) = (shape.head_dim, shape.kv_width());
        let n = keys.len() / width;
        for t in tokens.clone() {
            for g in 0..shape.kv_heads {
                let at = (g * n + t) * d;
                self.keys.extend_from_slice(&keys[at..at + d]);
            }
        }
        self.values
            .extend_from_slice(&values[tokens.start * width..tokens.end * width]);
    }

    /// Tokens seen.
    pub fn len(&self, shape: &CacheShape) -> usize {
        self.values.len() / shape.kv_width()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The heads of one attention.
#[derive(Debug, Clone, Copy)]
pub struct CacheShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` consecutive query heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Sliding window: a query at position `p` sees keys `j > p − window` only.
    pub window: Option<usize>,
}

impl CacheShape {
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The attention output `[heads, n, head_dim]` of the `n` new tokens `queries`
/// `[heads, n, head_dim]` (rotated), packed sequence after sequence: `spans[s]` is the range of
/// sequence `s`'s tokens, whose keys and values are already the last ones of `caches[s]`.
pub fn forward(
    queries: &[f32],
    spans: &[std::ops::Range<usize>],
    caches: &[SequenceCache],
    shape: &CacheShape,
    scale: f32,
) -> Vec<f32> {
    let d = shape.head_dim;
    let n = queries.len() / (shape.heads * d);
    let groups = shape.heads / shape.kv_heads;
    let mut out = zeros(shape.heads * n * d);
    out.par_chunks_mut(n * d)
        .enumerate()
        .for_each(|(head, out)| {
            let g = head / groups;
            let mut probs = Vec::new();
            for (span, cache) in spans.iter().zip(caches) {
                let seen = cache.len(shape);
                let first_new = seen - span.len();
                for (i, t) in span.clone().enumerate() {
                    let position = first_new + i;
                    let first = shape.window.map_or(0, |w| (position + 1).saturating_sub(w));
                    let query = &queries[(head * n + t) * d..][..d];
                    let key = |j: usize| &cache.keys[(j * shape.kv_heads + g) * d..][..d];
                    let value = |j: usize| &cache.values[(j * shape.kv_heads + g) * d..][..d];
                    probs.clear();
                    probs.extend((first..=position).map(|j| dot(query, key(j))));
                    softmax_row(&mut probs, scale);
                    let out = &mut out[t * d..(t + 1) * d];
                    for (j, &p) in (first..=position).zip(&probs) {
                        axpy(p, value(j), out);
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of one query over explicit keys/values, the textbook way in f64.
    fn reference(query: &[f32], keys: &[&[f32]], values: &[&[f32]], scale: f32) -> Vec<f32> {
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                query
                    .iter()
                    .zip(*k)
                    .map(|(q, k)| (q * k) as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..query.len())
            .map(|c| {
                let sum: f64 = weights
                    .iter()
                    .zip(values)
                    .map(|(w, v)| w * v[c] as f64)
                    .sum();
                (sum / total) as f32
            })
            .collect()
    }

    #[test]
    fn each_query_sees_its_own_sequence_up_to_its_position_inside_the_window() {
        let shape = CacheShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
            window: Some(3),
        };
        let value = |i: usize| ((i * 37 % 17) as f32 - 8.0) / 8.0;
        let (d, kvw) = (shape.head_dim, shape.kv_width());
        // Sequence 0 has 2 cached tokens and gets 3 new; sequence 1 has none and gets 2.
        let mut caches = vec![SequenceCache::default(), SequenceCache::default()];
        let old: Vec<f32> = (0..2 * kvw).map(|i| value(i + 500)).collect();
        let old_keys: Vec<f32> = (0..2 * kvw).map(|i| value(i + 700)).collect();
        caches[0].append(&old_keys, &old, 0..2, &shape);
        let n = 5;
        let keys: Vec<f32> = (0..n * kvw).map(|i| value(i + 100)).collect(); // [kv, n, d]
        let values: Vec<f32> = (0..n * kvw).map(|i| value(i + 300)).collect(); // [n, kv·d]
        let spans = [0..3, 3..5];
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.append(&keys, &values, span.clone(), &shape);
        }
        let queries: Vec<f32> = (0..shape.heads * n * d).map(value).collect();
        let out = forward(&queries, &spans, &caches, &shape, 0.5);
        for head in 0..shape.heads {
            let g = head / 2;
            for t in 0..n {
                let (cache, position) = if t < 3 {
                    (&caches[0], 2 + t)
                } else {
                    (&caches[1], t - 3)
                };
                let first = (position + 1).saturating_sub(3);
                let key = |j: usize| &cache.keys[(j * 2 + g) * d..][..d];
                let val = |j: usize| &cache.values[(j * 2 + g) * d..][..d];
                let keys: Vec<&[f32]> = (first..=position).map(key).collect();
                let vals: Vec<&[f32]> = (first..=position).map(val).collect();
                let query = &queries[(head * n + t) * d..][..d];
                let want = reference(query, &keys, &vals, 0.5);
                let got = &out[(head * n + t) * d..][..d];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-6,
                        "head {head}, token {t}: {got:?} vs {want:?}"
                    );
                }
            }
        }
        // The appended keys went in token-major: token 2 of sequence 0 is new token 0.
        assert_eq!(&caches[0].keys[2 * kvw..2 * kvw + d], &keys[..d]);
        assert_eq!(caches[1].len(&shape), 2);
    }
}
