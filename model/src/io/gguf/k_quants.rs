//! Encoders for the k-quant super-blocks of 256 values that llama.cpp's Q4_K mixtures use:
//! Q4_K and Q6_K, following ggml's reference quantizers without an importance matrix
//! (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` and their helpers `make_qkx2_quants`,
//! `make_qx_quants`, `nearest_int` in ggml-quants.c) operation for operation and in the same
//! order, so the bytes equal those `llama-quantize` writes (checked by
//! `scripts/llamacpp_check.py` against llama.cpp itself).

use half::f16;

use super::dequant::scale_min_k4;

/// Values per super-block.
pub const QK_K: usize = 256;

/// A group whose largest magnitude is below this counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the float representation of
/// `v + 1.5·2²³` (valid for |v| < 2²²).
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// One Q4_K super-block: `d, dmin: f16`, 12 bytes of 6-bit sub-block scales and minimums,
/// 128 bytes of 4-bit codes (value `32·p + l` in the low nibble of byte `32·(p/2) + l` for even
/// sub-block `p`, the high nibble for odd).
pub fn q4_k_block(x: &[f32]) -> [u8; 144] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let group = &x[32 * j..32 * j + 32];
        let sum_x2 = group.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + group[l].abs());
        (scales[j], mins[j]) = fit_scale_and_min(group, &weights, &mut levels[32 * j..][..32]);
        max_scale = if scales[j] > max_scale {
            scales[j]
        } else {
            max_scale
        };
        max_min = if mins[j] > max_min { mins[j] } else { max_min };
    }
    let mut out = [0u8; 144];
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut out[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d, dmin) = (
        f16::from_f32(max_scale / 63.0),
        f16::from_f32(max_min / 63.0),
    );
    out[..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &out[4..16]);
        let step = d.to_f32() * sc;
        if step == 0.0 {
            continue;
        }
        let offset = dmin.to_f32() * m;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + offset) / step).clamp(0, 15) as u8;
        }
    }
    for (chunk, q) in out[16..].chunks_exact_mut(32).enumerate() {
        let base = 64 * chunk;
        for l in 0..32 {
            q[l] = levels[base + l] | (levels[base + l + 32] << 4);
        }
    }
    out
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`: the scale
/// and (negated) minimum of an asymmetric 4-bit fit minimising the weighted squared error over
/// 21 trial scales, codes into `levels`.
fn fit_scale_and_min(x: &[f32], weights: &[f32], levels: &mut [u8]) -> (f32, f32) {
    const NMAX: i32 = 15;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..x.len() {
        levels[i] = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX) as u8;
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for is in 0..=NSTEP {
        iscale = (RMIN + RDELTA * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..x.len() {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let mut error = 0f32;
        for i in 0..x.len() {
            let diff = this_scale * trial[i] as f32 + this_min - x[i];
            error += weights[i] * (diff * diff);
        }
        if error < best_error {
            levels.copy_from_slice(&trial[..x.len()]);
            best_error = error;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// One Q6_K super-block: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed 8-bit
/// sub-block scales, then `d: f16`; value `d · scale · (q − 32)`.
pub fn q6_k_block(x: &[f32]) -> [u8; 210] {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, scale) in scales.iter_mut().enumerate() {
        *scale = fit_symmetric_scale(&x[16 * ib..][..16], &mut levels[16 * ib..][..16]);
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = *scale;
        }
    }
    let mut out = [0u8; 210];
    if max_abs_scale < GROUP_MAX_EPS {
        return out; // all zero, d = +0
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    out[208..].copy_from_slice(&d.to_le_bytes());
    for (ib, &scale) in scales.iter().enumerate() {
        out[192 + ib] = nearest_int(iscale * scale).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let step = d.to_f32() * (out[192 + j] as i8) as f32;
        if step == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / step).clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let l0 = 128 * half;
        for l in 0..32 {
            let q = [0, 32, 64, 96].map(|o| levels[l0 + l + o]);
            out[64 * half + l] = (q[0] & 0x0F) | ((q[2] & 0x0F) << 4);
            out[64 * half + l + 32] = (q[1] & 0x0F) | ((q[3] & 0x0F) << 4);
            out[128 + 32 * half + l] =
                (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    out
}

/// ggml's `make_qx_quants(16, 32, x, L, 1, NULL)`: the scale of a symmetric 6-bit fit
/// weighted by `x²`, refined over 18 trial scales; codes (offset 32) into `levels`.
fn fit_symmetric_scale(x: &[f32], levels: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(sumlx, suml2), &v| {
            let (w, l) = (v * v, code(iscale, v) as f32);
            (sumlx + w * v * l, suml2 + w * l * l)
        })
    };
    let mut iscale = -(NMAX as f32) / max;
    for (level, &v) in levels.iter_mut().zip(x) {
        *level = (code(iscale, v) + NMAX) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (level, &v) in levels.iter_mut().zip(x) {
                *level = (code(iscale, v) + NMAX) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequant::{GgmlType, dequantize};

    /// Deterministic values with a spread of magnitudes and signs.
    fn values(seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..QK_K)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let unit = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                unit * (1 + i % 7) as f32
            })
            .collect()
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.6, -8),
        ];
        for (v, want) in cases {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn k_blocks_round_trip_within_their_step() {
        for seed in 1..6 {
            let x = values(seed);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (ty, bytes, levels) in [
                (GgmlType::Q4K, q4_k_block(&x).to_vec(), 15.0),
                (GgmlType::Q6K, q6_k_block(&x).to_vec(), 63.0),
            ] {
                let back = dequantize(ty, &bytes);
                // Each sub-block spans at most the block's range in `levels` steps; the 6-bit
                // sub-block scales can stretch a step by up to about 1/63.
                let step = 2.0 * amax / levels * 1.1;
                for (a, b) in x.iter().zip(&back) {
                    assert!((a - b).abs() <= step, "{ty:?}: {a} came back as {b}");
                }
            }
        }
    }

    #[test]
    fn zero_super_blocks_decode_to_zero() {
        let zeros = [0f32; QK_K];
        assert!(q6_k_block(&zeros).iter().all(|&b| b == 0));
        let back = dequantize(GgmlType::Q4K, &q4_k_block(&zeros));
        assert!(back.iter().all(|&v| v == 0.0));
    }
}
