//! NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al., 2023) as bitsandbytes stores it:
//! blocks of 64 values, each scaled by its absolute maximum and rounded to the nearest of 16
//! code values (quantiles of a normal distribution), two codes per byte with the first value in
//! the high nibble. The absolute maximum is kept as an f32 per block: no double quantization
//! (bitsandbytes' `compress_statistics=False`), 4.5 bits per weight.

/// Values per block.
pub const BLOCK_VALUES: usize = 64;
/// Bytes per block: the f32 absolute maximum (little-endian), then 32 bytes of codes.
pub const BLOCK_BYTES: usize = 4 + BLOCK_VALUES / 2;

/// bitsandbytes' NF4 code book (`bitsandbytes.functional.get_4bit_type("nf4")`), ascending.
pub const CODE_BOOK: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The code of `scaled` (in `[-1, 1]`): the first code whose midpoint to the next code
/// (computed in f32) is not below it, so a value on a midpoint takes the lower code, as
/// bitsandbytes' `torch.bucketize` over those midpoints does.
fn code_of(scaled: f32) -> u8 {
    let above = CODE_BOOK
        .windows(2)
        .position(|pair| scaled <= (pair[0] + pair[1]) / 2.0);
    above.unwrap_or(CODE_BOOK.len() - 1) as u8
}

/// One block of [`BLOCK_VALUES`] values as [`BLOCK_BYTES`] bytes, computed as bitsandbytes'
/// `quantize_4bit` does: `x · (1 / absmax)` clamped to `[-1, 1]` (a zero block scales by
/// 1e38 and stays zero), then [`code_of`].
pub fn quantize_block(x: &[f32]) -> [u8; BLOCK_BYTES] {
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inverse = 1.0 / absmax.max(1e-38);
    let mut out = [0u8; BLOCK_BYTES];
    out[..4].copy_from_slice(&absmax.to_le_bytes());
    let code = |v: f32| code_of((v * inverse).clamp(-1.0, 1.0));
    for (byte, pair) in out[4..].iter_mut().zip(x.chunks_exact(2)) {
        *byte = (code(pair[0]) << 4) | code(pair[1]);
    }
    out
}

/// Decodes one block of [`BLOCK_BYTES`] bytes into its [`BLOCK_VALUES`] values.
pub fn dequantize_block(block: &[u8], out: &mut [f32]) {
    let absmax = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    for (pair, &byte) in out.chunks_exact_mut(2).zip(&block[4..BLOCK_BYTES]) {
        pair[0] = CODE_BOOK[(byte >> 4) as usize] * absmax;
        pair[1] = CODE_BOOK[(byte & 0x0F) as usize] * absmax;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_to_their_nearest_code_and_back() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 8.0)
            .collect();
        let block = quantize_block(&x);
        let mut back = [0f32; 64];
        dequantize_block(&block, &mut back);
        let absmax = 31.5 / 8.0;
        for (v, b) in x.iter().zip(back) {
            let best = CODE_BOOK
                .iter()
                .map(|c| (v - c * absmax).abs())
                .fold(f32::INFINITY, f32::min);
            assert!(((v - b).abs() - best).abs() <= 1e-6, "{v} decoded as {b}");
        }
        assert_eq!(back.iter().fold(0f32, |m, v| m.max(v.abs())), absmax);
    }

    #[test]
    fn a_zero_block_decodes_to_zero() {
        let mut back = [1f32; 64];
        dequantize_block(&quantize_block(&[0.0; 64]), &mut back);
        assert_eq!(back, [0.0; 64]);
    }
}
