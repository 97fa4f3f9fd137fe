//! llama.cpp's q/k row order for the `llama` architecture: its converter interleaves the rows
//! of each attention head so that RoPE rotates pairs `(2j, 2j+1)`, where Hugging Face rotates
//! `(j, j + half)`. Qwen's GGUFs use the NEOX rotation, which is HF's, and are not permuted.
//! Rows are whole (`width` values each), so the same functions serve LoRA's `B` matrices and
//! the rows of quantized blocks (bytes) of a projection kept as stored.

use crate::config::{Family, LlamaConfig};

/// Whether llama.cpp's converter permutes this family's q/k rows (its GGUF architecture is
/// `llama`: Llama and Mistral).
pub fn permutes_qk(family: Family) -> bool {
    matches!(family, Family::Llama | Family::Mistral)
}

/// The heads of HF tensor `hf_name` (a q or k projection's weight or bias) whose rows
/// llama.cpp's converter permuted for `config`'s family; `None` for every other tensor.
pub fn qk_heads(config: &LlamaConfig, hf_name: &str) -> Option<usize> {
    if !permutes_qk(config.family) {
        None
    } else if hf_name.contains(".self_attn.q_proj.") {
        Some(config.num_attention_heads)
    } else if hf_name.contains(".self_attn.k_proj.") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// HF → GGUF: GGUF row `2j + i` of each head is HF row `i · half + j` (llama.cpp's
/// `w.reshape(heads, 2, half, width).swapaxes(1, 2)`).
pub fn permute_rows<T: Copy>(values: &[T], rows: usize, heads: usize) -> Vec<T> {
    move_rows(values, rows, heads, |base, half, i, j| {
        (base + i * half + j, base + 2 * j + i)
    })
}

/// GGUF → HF, the inverse of [`permute_rows`].
pub fn unpermute_rows<T: Copy>(values: &[T], rows: usize, heads: usize) -> Vec<T> {
    move_rows(values, rows, heads, |base, half, i, j| {
        (base + 2 * j + i, base + i * half + j)
    })
}

/// Copies row `from` to row `to` for each `(from, to) = map(head base, half, i, j)`. The
/// rows (`values.len() / rows` values each) must split into `heads` heads of an even number of
/// rows, as a validated config's q/k projections do.
fn move_rows<T: Copy>(
    values: &[T],
    rows: usize,
    heads: usize,
    map: impl Fn(usize, usize, usize, usize) -> (usize, usize),
) -> Vec<T> {
    assert!(
        heads > 0
            && rows > 0
            && rows.is_multiple_of(2 * heads)
            && values.len().is_multiple_of(rows),
        "{rows} rows of {} values do not split into {heads} heads of row pairs",
        values.len()
    );
    let width = values.len() / rows;
    let half = rows / heads / 2;
    let mut out = values.to_vec();
    for h in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                let (from, to) = map(h * 2 * half, half, i, j);
                out[to * width..(to + 1) * width]
                    .copy_from_slice(&values[from * width..(from + 1) * width]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_llama_cpps_and_unpermute_inverts_it() {
        // llama.cpp: w.reshape(heads, 2, half, width).swapaxes(1, 2).reshape(rows, width)
        let (heads, half, width) = (3, 4, 2);
        let rows = heads * 2 * half;
        let hf: Vec<f32> = (0..rows * width).map(|v| v as f32).collect();
        let mut expected = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..half {
                    let from = (h * 2 * half + i * half + j) * width;
                    let to = (h * 2 * half + j * 2 + i) * width;
                    expected[to..to + width].copy_from_slice(&hf[from..from + width]);
                }
            }
        }
        let permuted = permute_rows(&hf, rows, heads);
        assert_ne!(permuted, hf);
        assert_eq!(permuted, expected);
        assert_eq!(unpermute_rows(&permuted, rows, heads), hf);
    }
}
