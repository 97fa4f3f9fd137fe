//! Encoding f32 values in the GGML storage types we write: F32, F16, BF16 (round to nearest
//! even), and the block formats Q8_0 and Q4_0 following ggml's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in ggml-quants.c) operation for operation,
//! so the bytes equal those of llama.cpp and of the `gguf` Python package's
//! `gguf.quants.quantize` (checked against a fixture in `tests/gguf_export.rs`).

use half::{bf16, f16};

use super::dequant::GgmlType;

/// Values per Q8_0 / Q4_0 block.
const BLOCK: usize = 32;

/// Whether we can write `ty`.
pub fn can_write(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0
    )
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
        _ => unreachable!("checked by can_write"),
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

/// One Q4_0 block: the f16 scale `d = max / -8` (`max` the value of largest magnitude, the
/// first of equals), then `min(15, trunc(x / d + 8.5))` as 4-bit codes, value `j` in the low
/// nibble of byte `j` and value `16 + j` in its high nibble.
fn q4_0_block(x: &[f32]) -> [u8; 18] {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let mut out = [0u8; 18];
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..BLOCK / 2 {
        out[2 + j] = code(x[j]) | (code(x[BLOCK / 2 + j]) << 4);
    }
    out
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
        for (ty, step) in [(GgmlType::Q8_0, 4.5 / 127.0), (GgmlType::Q4_0, 4.5 / 8.0)] {
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
            quantize(GgmlType::Q4K, &[0.0; 256], 256).unwrap_err(),
            "writing Q4K is not supported"
        );
    }
}
