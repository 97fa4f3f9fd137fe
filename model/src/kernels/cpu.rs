//! Fused element-wise kernels of the training pass for tensors in host memory (flex, and
//! LibTorch's CPU; see `host_tensor`). Each kernel is one pass over its rows where the Burn
//! formulation is several operations with a buffer each; rows are spread over all cores
//! (burn-flex runs element-wise operations on one), and `exp` is a polynomial the compiler
//! vectorises instead of one libm call per element. The formulas are those of the Burn
//! versions in `train/src/pass/ops/`; the backprop tests compare both with autodiff.

use multiversion::multiversion;
use rayon::prelude::*;

/// Elements one parallel task handles at least: waking a thread for less costs more than it
/// saves.
const MIN_TASK_ELEMENTS: usize = 32 * 1024;

/// Rows per parallel task for rows of `row_len` values.
fn min_rows(row_len: usize) -> usize {
    (MIN_TASK_ELEMENTS / row_len.max(1)).max(1)
}

/// `len` zeros, written by all cores (a buffer the size of an activation takes a while to
/// clear on one).
pub fn zeros(len: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    values
        .spare_capacity_mut()
        .par_chunks_mut(MIN_TASK_ELEMENTS)
        .for_each(|chunk| {
            for value in chunk {
                value.write(0.0);
            }
        });
    // SAFETY: every element of the capacity was written above.
    unsafe { values.set_len(len) };
    values
}

/// `e^x` to a few ulp (Cephes' `expf`: `2^k · e^r` with `|r| ≤ ln 2 / 2` and `e^r` a
/// polynomial); `0` below `-87` (so `e^-∞ = 0`), NaN stays NaN. Branch-free, so loops over it
/// vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let two_k = f32::from_bits((k_bits + 127).wrapping_shl(23) as u32);
    if x < -87.0 { 0.0 } else { e_r * two_k }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sum of `values`, sixteen lanes at a time (a plain float sum would not vectorise).
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Sum of `a ⊙ b`, sixteen lanes at a time.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Largest of `values` (`-∞` for none), sixteen lanes at a time.
#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// In place: `acc += x`, on all cores (burn-flex adds on one).
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: lengths differ");
    acc.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(x.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|(acc, x)| add_assign_chunk(acc, x));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn add_assign_chunk(acc: &mut [f32], x: &[f32]) {
    for (acc, &x) in acc.iter_mut().zip(x) {
        *acc += x;
    }
}

/// `out += a · x`.
#[inline(always)]
pub(crate) fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
    for (out, &x) in out.iter_mut().zip(x) {
        *out += a * x;
    }
}

/// In place: the softmax of `scale · row`.
#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn softmax_row(row: &mut [f32], scale: f32) {
    for value in row.iter_mut() {
        *value *= scale;
    }
    let largest = max(row);
    for value in row.iter_mut() {
        *value = exp(*value - largest);
    }
    let inverse = 1.0 / sum(row);
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

/// In place: the causal, segment-masked softmax of `scale · row` for query `query` over keys
/// `0..row.len()` whose segment ids are `segments` (key `j` is visible when
/// `first_key ≤ j ≤ query` and it is in the query's segment; the rest becomes `0`).
/// `first_key` is where a sliding window starts (0 without one).
#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn masked_softmax_row(
    row: &mut [f32],
    segments: &[i64],
    (first_key, query): (usize, usize),
    scale: f32,
) {
    let own = segments[query];
    let (visible, hidden) = row.split_at_mut(query + 1);
    let keys = visible.iter_mut().zip(&segments[..=query]).enumerate();
    for (key, (value, &segment)) in keys {
        *value = if segment == own && key >= first_key {
            *value * scale
        } else {
            f32::NEG_INFINITY
        };
    }
    let largest = max(visible);
    for value in visible.iter_mut() {
        *value = exp(*value - largest);
    }
    let inverse = 1.0 / sum(visible);
    for value in visible.iter_mut() {
        *value *= inverse;
    }
    hidden.fill(0.0);
}

/// In place: the softmax's backward pass over one row, `p ← scale · p ⊙ (dp − Σ p ⊙ dp)`.
#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn softmax_backward_row(p: &mut [f32], dp: &[f32], scale: f32) {
    let row_dot = dot(p, dp);
    for (p, &dp) in p.iter_mut().zip(dp) {
        *p = scale * *p * (dp - row_dot);
    }
}

/// `out = silu(gate) ⊙ up`, with `silu(x) = x · sigmoid(x)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(gate.par_chunks(MIN_TASK_ELEMENTS))
        .zip(up.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|((out, gate), up)| silu_mul_chunk(gate, up, out));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn silu_mul_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((out, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *out = g * sigmoid(g) * u;
    }
}

/// In place: the backward pass of [`silu_mul`] given `d_act`; `gate` becomes its gradient
/// `d_act ⊙ up ⊙ σ(g)(1 + g(1 − σ(g)))` and `up` becomes `d_act ⊙ silu(gate)`.
pub fn silu_mul_backward(gate: &mut [f32], up: &mut [f32], d_act: &[f32]) {
    gate.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(up.par_chunks_mut(MIN_TASK_ELEMENTS))
        .zip(d_act.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|((gate, up), d_act)| silu_mul_backward_chunk(gate, up, d_act));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn silu_mul_backward_chunk(gate: &mut [f32], up: &mut [f32], d_act: &[f32]) {
    for ((g, u), &d) in gate.iter_mut().zip(up.iter_mut()).zip(d_act) {
        let s = sigmoid(*g);
        let d_gate = d * *u * s * (1.0 + *g * (1.0 - s));
        *u = d * *g * s;
        *g = d_gate;
    }
}

/// The layout of rotary embedding over `rows` sequences of `len` tokens with `heads` heads of
/// `head_dim` values; the tables `cos`, `sin` are `[rows, len, head_dim]`.
pub struct RopeShape {
    /// Sequences.
    pub rows: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Heads.
    pub heads: usize,
    /// Values per head (even).
    pub head_dim: usize,
}

/// `out` `[rows, heads, len, head_dim]` = the rotation `x·cos + rotate_half(x)·sin` of `x`
/// `[rows·len, heads·head_dim]` (a projection's output, token-major) per head.
pub fn rope_to_heads(x: &[f32], cos: &[f32], sin: &[f32], shape: &RopeShape, out: &mut [f32]) {
    let RopeShape {
        len,
        heads,
        head_dim: d,
        ..
    } = *shape;
    out.par_chunks_mut(len * d)
        .enumerate()
        .for_each(|(task, out)| {
            let (row, head) = (task / heads, task % heads);
            for (t, out) in out.chunks_mut(d).enumerate() {
                let token = row * len + t;
                let x = &x[(token * heads + head) * d..][..d];
                let table = token * d..(token + 1) * d;
                rotate(x, &cos[table.clone()], &sin[table], out);
            }
        });
}

/// `out` `[rows·len, heads·head_dim]` = the rotation of `x` `[rows, heads, len, head_dim]` per
/// head, back in token-major order (with `-sin` for `sin`, the backward pass of
/// [`rope_to_heads`]).
pub fn rope_from_heads(x: &[f32], cos: &[f32], sin: &[f32], shape: &RopeShape, out: &mut [f32]) {
    let RopeShape {
        len,
        heads,
        head_dim: d,
        ..
    } = *shape;
    out.par_chunks_mut(heads * d)
        .enumerate()
        .with_min_len(min_rows(heads * d))
        .for_each(|(token, out)| {
            let (row, t) = (token / len, token % len);
            let table = token * d..(token + 1) * d;
            for (head, out) in out.chunks_mut(d).enumerate() {
                let x = &x[((row * heads + head) * len + t) * d..][..d];
                rotate(x, &cos[table.clone()], &sin[table.clone()], out);
            }
        });
}

/// `out = x·cos + rotate_half(x)·sin` with `rotate_half(x) = [-x₂, x₁]` for halves `x₁, x₂`.
#[inline(always)]
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    for i in 0..half {
        out1[i] = x1[i] * cos[i] - x2[i] * sin[i];
        out2[i] = x2[i] * cos[half + i] + x1[i] * sin[half + i];
    }
}

/// `out = x / rms(x) ⊙ weight` per row of `weight.len()` values, `rms(x) = √(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(min_rows(width))
        .for_each(|(out, x)| rms_norm_row(x, weight, eps, out));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv_rms = inverse_rms(x, eps);
    for ((out, &x), &w) in out.iter_mut().zip(x).zip(weight) {
        *out = x * inv_rms * w;
    }
}

/// `1 / √(mean(x²) + eps)`.
#[inline(always)]
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

/// In place: the backward pass of [`rms_norm`]; `d` holds `d_y` and becomes `d_x`: with
/// `g = d_y ⊙ w` and `r = 1/rms(x)`, `d_x = r·g − x·r³·mean(g ⊙ x)`.
pub fn rms_norm_backward(x: &[f32], weight: &[f32], eps: f32, d: &mut [f32]) {
    let width = weight.len();
    d.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(min_rows(width))
        .for_each(|(d, x)| rms_norm_backward_row(x, weight, eps, d));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn rms_norm_backward_row(x: &[f32], weight: &[f32], eps: f32, d: &mut [f32]) {
    let r = inverse_rms(x, eps);
    for (d, &w) in d.iter_mut().zip(weight) {
        *d *= w;
    }
    let projection = dot(d, x) / x.len() as f32;
    let x_factor = r * r * r * projection;
    for (d, &x) in d.iter_mut().zip(x) {
        *d = *d * r - x * x_factor;
    }
}

/// In place over `logits` (rows of `vocab`): the summed loss `Σ weight · (log Σ e^l − l[target])`
/// is returned and each row becomes its gradient `weight · (softmax − onehot(target))`; rows
/// of weight `0` become `0`. Targets must lie in `0..vocab`.
pub fn cross_entropy(logits: &mut [f32], vocab: usize, targets: &[usize], weights: &[f32]) -> f64 {
    let mut losses = vec![0.0f64; targets.len()];
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter().zip(weights))
        .zip(losses.par_iter_mut())
        .for_each(|((row, (&target, &weight)), loss)| {
            *loss = cross_entropy_row(row, target, weight);
        });
    // Summed in row order, so the result does not depend on how rows were split over threads.
    losses.iter().sum()
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn cross_entropy_row(row: &mut [f32], target: usize, weight: f32) -> f64 {
    if weight == 0.0 {
        row.fill(0.0);
        return 0.0;
    }
    let target_logit = row[target];
    let largest = max(row);
    for value in row.iter_mut() {
        *value = exp(*value - largest);
    }
    let total = sum(row);
    let factor = weight / total;
    for value in row.iter_mut() {
        *value *= factor;
    }
    row[target] -= weight;
    let log_norm = largest as f64 + (total as f64).ln();
    weight as f64 * (log_norm - target_logit as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tolerance: f32) -> bool {
        (a - b).abs() <= tolerance * (1.0 + b.abs())
    }

    #[test]
    fn exp_matches_libm_over_the_float_range() {
        let mut x = -90.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                (ours - libm).abs() <= 4.0 * f32::EPSILON * libm + 2e-38,
                "exp({x}) = {ours}, libm {libm}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn masked_softmax_hides_future_keys_and_other_segments() {
        // Tokens in segments [0, 0, 1, 1]; queries 2 and 3 against keys 0..4.
        let segments = [0i64, 0, 1, 1];
        let mut first = vec![1.0, 2.0, 3.0, 4.0];
        masked_softmax_row(&mut first, &segments, (0, 2), 0.5);
        assert_eq!(first, [0.0, 0.0, 1.0, 0.0]);
        let mut second = vec![1.0, 2.0, 3.0, 4.0];
        masked_softmax_row(&mut second, &segments, (0, 3), 0.5);
        let (a, b) = ((1.5f32).exp(), (2.0f32).exp());
        assert_eq!(&second[..2], &[0.0, 0.0]);
        assert!(close(second[2], a / (a + b), 1e-6) && close(second[3], b / (a + b), 1e-6));
        // A window of 2 keys: query 3 of one segment sees keys 2 and 3 only.
        let mut windowed = vec![1.0, 2.0, 3.0, 4.0];
        masked_softmax_row(&mut windowed, &[0; 4], (2, 3), 0.5);
        assert_eq!(&windowed[..2], &[0.0, 0.0]);
        assert!(close(windowed[2], a / (a + b), 1e-6) && close(windowed[3], b / (a + b), 1e-6));
    }

    #[test]
    fn cross_entropy_matches_the_definition() {
        let vocab = 37;
        let mut logits: Vec<f32> = (0..2 * vocab)
            .map(|k| ((k * 7) % 11) as f32 * 0.3)
            .collect();
        let original = logits.clone();
        let loss = cross_entropy(&mut logits, vocab, &[5, 0], &[0.5, 0.0]);
        let row = &original[..vocab];
        let log_norm = row.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!(close(loss as f32, 0.5 * (log_norm - row[5]), 1e-6));
        for (k, &g) in logits[..vocab].iter().enumerate() {
            let expected = 0.5 * ((row[k] - log_norm).exp() - if k == 5 { 1.0 } else { 0.0 });
            assert!(close(g, expected, 1e-6), "d_logit {k}: {g} vs {expected}");
        }
        assert!(logits[vocab..].iter().all(|&g| g == 0.0));
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let gate = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let up = [0.3f32, -1.2, 2.0, 0.9, -0.4];
        let d_act = [1.0f32; 5];
        let (mut d_gate, mut d_up) = (gate, up);
        silu_mul_backward(&mut d_gate, &mut d_up, &d_act);
        let f = |g: f32, u: f32| g / (1.0 + (-g as f64).exp() as f32) * u;
        for k in 0..5 {
            let h = 1e-3;
            let numeric = (f(gate[k] + h, up[k]) - f(gate[k] - h, up[k])) / (2.0 * h);
            assert!(
                close(d_gate[k], numeric, 1e-3),
                "{k}: {} vs {numeric}",
                d_gate[k]
            );
            assert!(close(d_up[k], f(gate[k], 1.0), 1e-6));
        }
    }

    #[test]
    fn rope_round_trips_through_heads() {
        // 2 rows × 3 tokens, 2 heads of 4: rotating with sin and back with -sin is the identity.
        let shape = RopeShape {
            rows: 2,
            len: 3,
            heads: 2,
            head_dim: 4,
        };
        let x: Vec<f32> = (0..48).map(|k| (k as f32 * 0.37).sin()).collect();
        // Each token's angles repeat over the two halves, as `Rope::cos_sin` builds them.
        let angles: Vec<f32> = (0..24).map(|k| (k / 4 * 2 + k % 2) as f32 * 0.11).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        let mut heads = vec![0.0; 48];
        rope_to_heads(&x, &cos, &sin, &shape, &mut heads);
        // Token 1 of row 1, head 1, value 0: x·cos − x₂·sin.
        let (token, head) = (3 + 1, 1);
        let at = |k: usize| x[(token * 2 + head) * 4 + k];
        let expected = at(0) * cos[token * 4] - at(2) * sin[token * 4];
        assert!(close(heads[((2 + head) * 3 + 1) * 4], expected, 1e-6));
        let mut back = vec![0.0; 48];
        rope_from_heads(&heads, &cos, &neg_sin, &shape, &mut back);
        for (a, b) in back.iter().zip(&x) {
            assert!(close(*a, *b, 1e-5), "{a} vs {b}");
        }
    }
}
