//! What `export gguf --type` asks for, and which storage type each tensor then gets: the rules
//! of llama.cpp's `llama-quantize` (`llama_tensor_get_type` in src/llama-quant.cpp, without an
//! importance matrix), so a quantized export equals what `llama-quantize` makes from our f32
//! export, tensor for tensor and byte for byte (checked by `scripts/llamacpp_check.py`).
//!
//! - Vectors (norms, biases, `rope_freqs.weight`) stay F32.
//! - `q8_0`, `q4_0`: every matrix in that type; the output projection (the embedding when
//!   tied) of `q4_0` goes to Q6_K, or Q8_0 when its rows are not whole Q4_0 blocks.
//! - `q4_k`: every matrix Q4_K (llama-quantize's `--pure` Q4_K).
//! - `q4_k_m`: Q4_K, with the output projection at Q6_K (Q8_0 when its rows are not whole
//!   super-blocks) and `attn_v`/`ffn_down` at Q6_K in the first eighth of the layers, the last
//!   eighth and every third layer between (`use_more_bits`).
//! - Rows that are not whole blocks fall back as llama.cpp's do: Q4_K → Q5_0, Q6_K → Q8_0,
//!   then F16.

use std::collections::BTreeMap;

use super::dequant::GgmlType;
use crate::Error;

/// What `export gguf --type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufFileType {
    /// Everything F32.
    F32,
    /// Matrices F16.
    F16,
    /// Matrices BF16.
    BF16,
    /// Matrices Q8_0.
    Q8_0,
    /// Matrices Q4_0, the output projection Q6_K or Q8_0.
    Q4_0,
    /// Matrices Q4_K.
    Q4K,
    /// llama.cpp's Q4_K_M mixture of Q4_K and Q6_K.
    Q4KM,
}

/// The names `--type` takes.
const NAMES: &str = "f32, f16, bf16, q8_0, q4_0, q4_k, q4_k_m";

impl std::str::FromStr for GgufFileType {
    type Err = Error;

    /// One of [`NAMES`].
    fn from_str(name: &str) -> Result<Self, Error> {
        Ok(match name {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k" => Self::Q4K,
            "q4_k_m" => Self::Q4KM,
            other => return Err(Error::Usage(format!("`{other}` is not one of {NAMES}"))),
        })
    }
}

impl GgufFileType {
    /// `general.file_type` (llama.cpp's `llama_ftype`; `q4_k` is llama-quantize's pure Q4_K_S).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4K => 14,
            Self::Q4KM => 15,
            Self::BF16 => 32,
        }
    }

    /// The storage type of a matrix before the mixture's exceptions.
    fn base_type(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4K | Self::Q4KM => GgmlType::Q4K,
        }
    }
}

/// A type per tensor, plus notes on the fallbacks taken.
pub struct StorageTypes {
    /// One per tensor, in the order given.
    pub types: Vec<GgmlType>,
    /// Tensors whose rows did not fit the chosen type's blocks, and what they got instead
    /// (one note per kind of fallback).
    pub notes: Vec<String>,
}

/// The storage type of each GGUF tensor (name, shape with the row length last) of a model
/// with `layers` layers, as llama-quantize chooses it for `ty`.
pub fn storage_types(
    ty: GgufFileType,
    tensors: &[(String, Vec<usize>)],
    layers: usize,
) -> Result<StorageTypes, String> {
    if ty == GgufFileType::Q4KM && layers == 80 {
        return Err(
            "--type q4_k_m: llama.cpp keeps attn_v of 80-layer (70B) models at Q5_K, \
                    which feinschliff does not write; export f16 and run llama-quantize"
                .into(),
        );
    }
    let tied = !tensors.iter().any(|(name, _)| name == "output.weight");
    let attn_v_count = tensors.iter().filter(|(n, _)| is_attn_v(n)).count();
    let (mut attn_v_seen, mut ffn_down_seen) = (0, 0);
    let mut fallbacks: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut out = StorageTypes {
        types: Vec::with_capacity(tensors.len()),
        notes: Vec::new(),
    };
    let base = ty.base_type();
    for (name, shape) in tensors {
        let quantizable =
            shape.len() >= 2 && name.ends_with("weight") && !name.contains("_norm.weight");
        if !quantizable || base.block().0 == 1 {
            out.types
                .push(if quantizable { base } else { GgmlType::F32 });
            continue;
        }
        let cols = shape[shape.len() - 1];
        let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
        let chosen = match ty {
            GgufFileType::Q4K => base,
            _ if is_output && !cols.is_multiple_of(base.block().0) => GgmlType::Q8_0,
            _ if is_output && base != GgmlType::Q8_0 => GgmlType::Q6K,
            GgufFileType::Q4KM if is_attn_v(name) => {
                attn_v_seen += 1;
                more_bits(attn_v_seen - 1, attn_v_count, base)
            }
            GgufFileType::Q4KM if name.contains("ffn_down") => {
                ffn_down_seen += 1;
                more_bits(ffn_down_seen - 1, layers, base)
            }
            _ => base,
        };
        let fitted = fallback(chosen, cols);
        if fitted != chosen {
            let what = format!(
                "rows of {cols} values are not whole {chosen:?} blocks; stored as {fitted:?}, \
                 as llama.cpp does"
            );
            fallbacks.entry(what).or_default().push(name);
        }
        out.types.push(fitted);
    }
    out.notes = fallbacks
        .into_iter()
        .map(|(what, names)| match names.as_slice() {
            [one] => format!("{one}: {what}"),
            [first, ..] => format!("{} tensors ({first}, …): {what}", names.len()),
            [] => unreachable!("a group has a tensor"),
        })
        .collect();
    Ok(out)
}

/// Whether `name` is a value projection (llama.cpp counts them for `use_more_bits`).
fn is_attn_v(name: &str) -> bool {
    name.contains("attn_v.weight")
}

/// Q6_K for layer `i` of `n` where llama.cpp's `use_more_bits` says so, else `base`.
fn more_bits(i: usize, n: usize, base: GgmlType) -> GgmlType {
    let (i, n) = (i as i64, n as i64);
    let more = i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
    if more { GgmlType::Q6K } else { base }
}

/// llama.cpp's `tensor_type_fallback`: a type whose blocks fit rows of `cols` values.
pub(crate) fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block().0) {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(smaller.block().0) {
        smaller
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    /// A 4-layer model's tensors in file order; `width` is hidden = intermediate size.
    fn tensors(width: usize, tied: bool) -> Vec<(String, Vec<usize>)> {
        let mut list = vec![("token_embd.weight".to_string(), vec![100, width])];
        for i in 0..4 {
            for part in ["attn_norm", "attn_q", "attn_v", "ffn_down"] {
                let shape = match part {
                    "attn_norm" => vec![width],
                    _ => vec![width, width],
                };
                list.push((format!("blk.{i}.{part}.weight"), shape));
            }
        }
        list.push(("output_norm.weight".into(), vec![width]));
        if !tied {
            list.push(("output.weight".into(), vec![100, width]));
        }
        list
    }

    fn types(ty: GgufFileType, width: usize, tied: bool) -> Vec<GgmlType> {
        storage_types(ty, &tensors(width, tied), 4).unwrap().types
    }

    #[test]
    fn q4_k_m_follows_use_more_bits() {
        // Layers 0..4: n/8 = 0, 7n/8 = 3, so layers 2 and 3 get more bits.
        let layer = |q, v, d| [F32, q, v, d];
        let mut want = vec![Q6K]; // tied embedding = output projection
        want.extend(layer(Q4K, Q4K, Q4K));
        want.extend(layer(Q4K, Q4K, Q4K));
        want.extend(layer(Q4K, Q6K, Q6K));
        want.extend(layer(Q4K, Q6K, Q6K));
        want.push(F32);
        assert_eq!(types(GgufFileType::Q4KM, 256, true), want);
        let untied = types(GgufFileType::Q4KM, 256, false);
        assert_eq!((untied[0], untied[untied.len() - 1]), (Q4K, Q6K));
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        // 576 = SmolLM2's hidden size: not whole super-blocks, whole blocks of 32.
        let t = types(GgufFileType::Q4KM, 576, true);
        assert_eq!((t[0], t[2], t[3], t[15]), (Q8_0, Q5_0, Q5_0, Q8_0));
        let t = types(GgufFileType::Q4_0, 576, true);
        assert_eq!((t[0], t[2]), (Q8_0, Q4_0));
        let t = types(GgufFileType::Q4_0, 48, true);
        assert_eq!((t[0], t[2]), (F16, F16));
        assert_eq!(types(GgufFileType::Q4_0, 256, true)[0], Q6K);
        assert!(types(GgufFileType::Q8_0, 256, true)[1..].contains(&Q8_0));
        assert!(
            types(GgufFileType::Q4K, 256, true)
                .iter()
                .all(|t| matches!(t, Q4K | F32))
        );
    }

    #[test]
    fn float_types_keep_vectors_in_f32() {
        let t = types(GgufFileType::BF16, 48, true);
        assert_eq!((t[0], t[1], t[2]), (BF16, F32, BF16));
    }
}
