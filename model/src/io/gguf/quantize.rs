//! Encoding f32 values in the GGML storage types we write: F32, F16, BF16 (round to nearest
//! even), the blocks of 32 Q8_0, Q4_0, Q5_0 and Q5_1 following ggml's reference quantizers
//! (`quantize_row_q8_0_ref` … `quantize_row_q5_1_ref` in ggml-quants.c) operation for
//! operation, so the bytes equal those of llama.cpp and of the `gguf` Python package's
//! `gguf.quants.quantize` (checked against a fixture in `tests/gguf_export.rs`), and the
//! k-quants Q4_K and Q6_K of [`super::k_quants`].

use half::{bf16, f16};

use super::dequant::GgmlType;
use super::k_quants::{q4_k_block, q6_k_block};

/// Values per Q8_0 / Q4_0 / Q5_0 / Q5_1 block.
const BLOCK: usize = 32;

/// Whether we can write `ty` (every type we read but Q4_1 and Q5_K).
pub fn can_write(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5K)
}

/// `values` (rows of `row_len` values each) encoded as `ty`. Errors when `ty` is not a type
/// we write or `row_len` is not a multiple of its block size.
pub fn quantize(ty: GgmlType, values: &[f32], row_len: usize) -> Result<Vec<u8>, String> {
    let block = ty.block().0;
    if !can_write(ty) {
        return Err(format!("writing {ty:?} is not supported"));
    }
    if row_len == 0 || !row_len.is_multiple_of(block) || !values.len().is_multiple_of(row_len) {
        return Err(format!(
            "rows of {row_len} values cannot be stored as {ty:?} (blocks of {block})"
        ));
    }
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => values.chunks_exact(BLOCK).flat_map(q8_0_block).collect(),
        GgmlType::Q4_0 => values.chunks_exact(BLOCK).flat_map(q4_0_block).collect(),
        GgmlType::Q5_0 => values.chunks_exact(BLOCK).flat_map(q5_0_block).collect(),
        GgmlType::Q5_1 => values.chunks_exact(BLOCK).flat_map(q5_1_block).collect(),
        GgmlType::Q4K => values.chunks_exact(block).flat_map(q4_k_block).collect(),
        GgmlType::Q6K => values.chunks_exact(block).flat_map(q6_k_block).collect(),
        GgmlType::Q4_1 | GgmlType::Q5K => unreachable!("checked by can_write"),
    })
}

/// One Q8_0 block: the f16 scale `d = amax / 127`, then `round(x / d)` as 32 signed bytes.
fn q8_0_block(x: &[f32]) -> [u8; 34] {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; 34];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &v) in out[2..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
    out
}

/// The value of largest magnitude (the first of equals), as ggml's symmetric quantizers find it.
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// One Q4_0 block: the f16 scale `d = max / -8` (`max` the value of largest magnitude, the
/// first of equals), then `min(15, trunc(x / d + 8.5))` as 4-bit codes, value `j` in the low
/// nibble of byte `j` and value `16 + j` in its high nibble.
fn q4_0_block(x: &[f32]) -> [u8; 18] {
    let d = signed_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let mut out = [0u8; 18];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..BLOCK / 2 {
        out[2 + j] = code(x[j]) | (code(x[BLOCK / 2 + j]) << 4);
    }
    out
}

/// One Q5_0 block: `d = max / -16`, codes `min(31, trunc(x / d + 16.5))`; low nibbles as in
/// Q4_0, the fifth bits in `qh: u32` (bit `j` for value `j`).
fn q5_0_block(x: &[f32]) -> [u8; 22] {
    let d = signed_max(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let codes: [u8; BLOCK] = std::array::from_fn(|j| ((x[j] * id + 16.5) as i8).min(31) as u8);
    let mut out = [0u8; 22];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    pack_five_bits(&codes, &mut out[2..]);
    out
}

/// One Q5_1 block: `d = (max − min) / 31` and `m = min`, codes `trunc((x − min) / d + 0.5)`,
/// packed as in Q5_0.
fn q5_1_block(x: &[f32]) -> [u8; 24] {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let codes: [u8; BLOCK] = std::array::from_fn(|j| ((x[j] - min) * id + 0.5) as u8);
    let mut out = [0u8; 24];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    pack_five_bits(&codes, &mut out[4..]);
    out
}

/// `qh: u32` (the fifth bits) then `qs: [u8; 16]` (value `j` low, `16 + j` high nibble).
fn pack_five_bits(codes: &[u8; BLOCK], out: &mut [u8]) {
    let qh = (0..BLOCK).fold(0u32, |qh, j| qh | (((codes[j] as u32 & 0x10) >> 4) << j));
    out[..4].copy_from_slice(&qh.to_le_bytes());
    for j in 0..BLOCK / 2 {
        out[4 + j] = (codes[j] & 0x0F) | ((codes[BLOCK / 2 + j] & 0x0F) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequant::dequantize;

    #[test]
    fn blocks_round_trip_within_their_step() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0)
            .collect();
        for (ty, step) in [
            (GgmlType::Q8_0, 4.5 / 127.0),
            (GgmlType::Q4_0, 4.5 / 8.0),
            (GgmlType::Q5_0, 4.5 / 16.0),
            (GgmlType::Q5_1, 9.0 / 31.0),
        ] {
            let back = dequantize(ty, &quantize(ty, &values, 64).unwrap());
            for (a, b) in values.iter().zip(&back) {
                assert!((a - b).abs() <= step, "{ty:?}: {a} came back as {b}");
            }
        }
    }

    #[test]
    fn zero_blocks_and_bad_rows() {
        let zeros = quantize(GgmlType::Q4_0, &[0.0; 32], 32).unwrap();
        assert_eq!(zeros[..2], [0x00, 0x80]); // d = 0 / -8 = -0.0 in f16, as in ggml
        assert!(zeros[2..].iter().all(|&b| b == 0x88));
        assert_eq!(
            quantize(GgmlType::Q8_0, &[0.0; 48], 48).unwrap_err(),
            "rows of 48 values cannot be stored as Q8_0 (blocks of 32)"
        );
        assert_eq!(
            quantize(GgmlType::Q5K, &[0.0; 256], 256).unwrap_err(),
            "writing Q5K is not supported"
        );
        assert_eq!(
            quantize(GgmlType::Q4K, &[0.0; 64], 64).unwrap_err(),
            "rows of 64 values cannot be stored as Q4K (blocks of 256)"
        );
    }
}
