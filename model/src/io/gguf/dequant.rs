//! Dequantization of GGML tensor data to f32, block format by block format, following
//! ggml's reference implementations (`dequantize_row_*` in ggml-quants.c) operation for
//! operation, so the values equal llama.cpp's and the `gguf` Python package's.

use half::{bf16, f16};

/// The GGML tensor types we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit, blocks of 32 with one f16 scale.
    Q8_0,
    /// 4-bit, blocks of 32 with one f16 scale (offset 8).
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and an f16 minimum.
    Q4_1,
    /// 5-bit, blocks of 32 with one f16 scale (offset 16).
    Q5_0,
    /// 5-bit, blocks of 32 with an f16 scale and an f16 minimum.
    Q5_1,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 5-bit k-quant, super-blocks of 256.
    Q5K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
}

impl GgmlType {
    /// The type of a GGML type id, or its name (`Q5_0`, ...) when we cannot read it.
    pub(crate) fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::BF16,
            8 => Self::Q8_0,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            other => {
                let name = match other {
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    15 => "Q8_K",
                    16..=23 | 29 => "an IQ type",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    34 | 35 => "a ternary type",
                    _ => "unknown",
                };
                return Err(format!(
                    "tensor type {other} ({name}) is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
                ));
            }
        })
    }

    /// The GGML type id (the inverse of [`GgmlType::from_id`]).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes taken by `count` values, or an error when `count` is not a whole number of blocks.
    pub(crate) fn byte_len(self, count: usize) -> Result<usize, String> {
        let (values, bytes) = self.block();
        if !count.is_multiple_of(values) {
            return Err(format!(
                "{count} values are not a whole number of {self:?} blocks of {values}"
            ));
        }
        (count / values)
            .checked_mul(bytes)
            .ok_or_else(|| "tensor size overflows".to_string())
    }
}

/// Dequantizes `data` (exactly [`GgmlType::byte_len`] bytes) into f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    let (per_block, block_bytes) = ty.block();
    let mut out = vec![0f32; data.len() / block_bytes * per_block];
    for (block, values) in data
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(per_block))
    {
        dequantize_block(ty, block, values);
    }
    out
}

/// Dequantizes one block of `ty` (its [`GgmlType::block`] bytes) into `out` (its values).
pub fn dequantize_block(ty: GgmlType, block: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        GgmlType::F16 => out[0] = half_at(block, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([block[0], block[1]]).to_f32(),
        GgmlType::Q8_0 => q8_0(block, out),
        GgmlType::Q4_0 => q4_0(block, out),
        GgmlType::Q4_1 => q4_1(block, out),
        GgmlType::Q5_0 => {
            let d = half_at(block, 0);
            let codes = q5_codes(&block[2..]);
            for (y, q) in out.iter_mut().zip(codes) {
                *y = (q as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (half_at(block, 0), half_at(block, 2));
            let codes = q5_codes(&block[4..]);
            for (y, q) in out.iter_mut().zip(codes) {
                *y = q as f32 * d + m;
            }
        }
        GgmlType::Q4K => q4_k(block, out),
        GgmlType::Q5K => q5_k(block, out),
        GgmlType::Q6K => q6_k(block, out),
    }
}

/// The f16 at byte `at`, as f32.
fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `d: f16, qs: [i8; 32]`; `x = d · q`.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    for (y, &q) in out.iter_mut().zip(&block[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// `d: f16, qs: [u8; 16]`; low nibbles are values 0..16, high nibbles 16..32; `x = d · (q − 8)`.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    let (low, high) = out.split_at_mut(16);
    for ((lo, hi), &q) in low.iter_mut().zip(high).zip(&block[2..18]) {
        *lo = ((q & 0x0F) as i32 - 8) as f32 * d;
        *hi = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`; nibbles as in Q4_0; `x = d · q + m`.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    let (low, high) = out.split_at_mut(16);
    for ((lo, hi), &q) in low.iter_mut().zip(high).zip(&block[4..20]) {
        *lo = (q & 0x0F) as f32 * d + m;
        *hi = (q >> 4) as f32 * d + m;
    }
}

/// The 32 five-bit codes of a Q5_0 / Q5_1 block's `qh: u32, qs: [u8; 16]`: nibbles as in
/// Q4_0, bit `j` of `qh` the fifth bit of value `j`. Q5_0 reads `x = d · (q − 16)`, Q5_1
/// `x = d · q + m`.
fn q5_codes(bits: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([bits[0], bits[1], bits[2], bits[3]]);
    let fifth = |j: usize| (((qh >> j) & 1) << 4) as u8;
    std::array::from_fn(|j| {
        let nibble = if j < 16 {
            bits[4 + j] & 0x0F
        } else {
            bits[4 + j - 16] >> 4
        };
        nibble | fifth(j)
    })
}

/// The 6-bit scale and minimum of sub-block `j` packed in the 12 scale bytes of a
/// Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: eight sub-blocks of 32 with 6-bit
/// scales and minimums; `x = d·sc · q − dmin·m`.
fn q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let scales = &block[4..16];
    let pairs = block[16..144]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64));
    for (pair, (qs, y)) in pairs.enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (low, high) = y.split_at_mut(32);
        for ((lo, hi), &q) in low.iter_mut().zip(high).zip(qs) {
            *lo = d1 * (q & 0x0F) as f32 - m1;
            *hi = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// Q4_K plus a fifth bit per value in `qh: [u8; 32]`.
fn q5_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let scales = &block[4..16];
    let qh = &block[16..48];
    let pairs = block[48..176]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64));
    for (pair, (ql, y)) in pairs.enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let high = |h: u8, bit: u8| if h & bit != 0 { 16.0 } else { 0.0 };
        let (low, hi) = y.split_at_mut(32);
        for (((lo, hi), &q), &h) in low.iter_mut().zip(hi).zip(ql).zip(qh) {
            *lo = d1 * ((q & 0x0F) as f32 + high(h, u1)) - m1;
            *hi = d2 * ((q >> 4) as f32 + high(h, u2)) - m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: 6-bit values in two halves of
/// 128, each value `d · scale · (q − 32)`.
fn q6_k(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
