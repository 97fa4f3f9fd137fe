//! The frozen base kept quantized, as QLoRA does it: each projection's weight stays in blocks
//! of a few bits ([`QuantizedMatrix`]) and is dequantized a tile at a time inside its products
//! (`kernels::quant_matmul`), so no f32 copy of the base exists. Blocks are GGML's (Q8_0, Q4_K
//! and whatever a GGUF file holds) or bitsandbytes' [`nf4`].

pub mod matrix;
pub mod nf4;
pub mod product;

use serde::{Deserialize, Serialize};

use crate::io::gguf::dequant::{GgmlType, dequantize_block};
use crate::io::gguf::file_type::fallback;
use crate::io::gguf::quantize::quantize;
pub use matrix::QuantizedMatrix;

/// How the blocks of a quantized matrix are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// A GGML block type (as in GGUF files).
    Ggml(GgmlType),
    /// bitsandbytes' NF4 with an f32 absolute maximum per 64 values ([`nf4`]).
    Nf4,
}

impl BlockFormat {
    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::Ggml(ty) => ty.block(),
            Self::Nf4 => (nf4::BLOCK_VALUES, nf4::BLOCK_BYTES),
        }
    }

    /// The name users see: `Q8_0`, `Q4_K`, `NF4`, ...
    pub fn name(self) -> String {
        match self {
            Self::Ggml(GgmlType::Q4K) => "Q4_K".into(),
            Self::Ggml(GgmlType::Q5K) => "Q5_K".into(),
            Self::Ggml(GgmlType::Q6K) => "Q6_K".into(),
            Self::Ggml(ty) => format!("{ty:?}"),
            Self::Nf4 => "NF4".into(),
        }
    }

    /// Bits per weight, block overhead included.
    pub fn bits_per_weight(self) -> f64 {
        let (values, bytes) = self.block();
        8.0 * bytes as f64 / values as f64
    }

    /// Rows of `cols` values encoded as blocks of this format.
    pub fn encode(self, values: &[f32], cols: usize) -> Result<Vec<u8>, String> {
        match self {
            Self::Ggml(ty) => quantize(ty, values, cols),
            Self::Nf4 => {
                if !cols.is_multiple_of(nf4::BLOCK_VALUES) || !values.len().is_multiple_of(cols) {
                    return Err(format!("rows of {cols} values are not whole NF4 blocks"));
                }
                Ok(values
                    .chunks_exact(nf4::BLOCK_VALUES)
                    .flat_map(nf4::quantize_block)
                    .collect())
            }
        }
    }

    /// Decodes one block (its bytes) into its values.
    pub fn decode_block(self, block: &[u8], out: &mut [f32]) {
        match self {
            Self::Ggml(ty) => dequantize_block(ty, block, out),
            Self::Nf4 => nf4::dequantize_block(block, out),
        }
    }
}

/// `model.base_quant`: how the frozen projections are kept in memory.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum BaseQuant {
    /// Dense, in `model.base_dtype`.
    #[default]
    #[serde(rename = "none")]
    None,
    /// GGML's Q8_0: 8 bits per weight and an f16 scale per 32 (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGML's Q4_K: 4-bit super-blocks of 256 with 6-bit scales and minimums (4.5 bits); rows
    /// that are not whole super-blocks fall back as llama.cpp's do (Q5_0).
    #[serde(rename = "q4_k")]
    Q4K,
    /// bitsandbytes' NF4 (QLoRA) with f32 absolute maxima, blocks of 64 (4.5 bits).
    #[serde(rename = "nf4")]
    Nf4,
}

impl BaseQuant {
    /// The name in the config (`none`, `q8_0`, `q4_k`, `nf4`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Nf4 => "nf4",
        }
    }

    /// The format a matrix with rows of `cols` values is kept in; `None` keeps it dense (no
    /// quantization asked for, or rows that fit no block of the asked-for kind).
    pub fn format_for(self, cols: usize) -> Option<BlockFormat> {
        let ggml = |ty: GgmlType| match fallback(ty, cols) {
            GgmlType::F16 => None,
            fitting => Some(BlockFormat::Ggml(fitting)),
        };
        if cols == 0 {
            return None;
        }
        match self {
            Self::None => None,
            Self::Q8_0 => ggml(GgmlType::Q8_0),
            Self::Q4K => ggml(GgmlType::Q4K),
            Self::Nf4 => cols
                .is_multiple_of(nf4::BLOCK_VALUES)
                .then_some(BlockFormat::Nf4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_fit_no_block_fall_back_as_llama_cpp_does() {
        let q4k = BlockFormat::Ggml(GgmlType::Q4K);
        assert_eq!(BaseQuant::Q4K.format_for(4096), Some(q4k));
        let q5_0 = BlockFormat::Ggml(GgmlType::Q5_0);
        assert_eq!(BaseQuant::Q4K.format_for(576), Some(q5_0));
        assert_eq!(BaseQuant::Q8_0.format_for(100), None);
        assert_eq!(BaseQuant::Nf4.format_for(96), None);
        assert_eq!(BaseQuant::None.format_for(4096), None);
        assert_eq!(BlockFormat::Nf4.bits_per_weight(), 4.5);
    }
}
