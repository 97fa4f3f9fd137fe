//! A LoRA adapter as llama.cpp's adapter GGUF (the format of its `convert_lora_to_gguf.py`,
//! read by `src/llama-adapter.cpp`): `general.type = adapter`, `adapter.type = lora`,
//! `general.architecture` of the base, `adapter.lora.alpha`, and per adapted matrix the pair
//! `blk.N.<module>.weight.lora_a` (`A`, `[r, in]`) and `.lora_b` (`B`, `[out, r]`), `B`'s rows
//! in llama.cpp's q/k order for the `llama` architecture as the base's q/k rows are.
//!
//! llama.cpp scales `B A x` by `alpha / r` with `r` the rank of each pair, and by 1 when alpha
//! is 0; rsLoRA's `alpha / √r` is written as the alpha `α·√r`, and an alpha of 0 is refused.

use std::path::Path;

use burn::tensor::Tensor;

use super::dequant::GgmlType;
use super::export::{GgufSummary, gguf_architecture};
use super::names::gguf_name;
use super::qk_permute::{permute_rows, qk_heads};
use super::quantize::quantize;
use super::writer::{MetaValue, TensorEntry, write_gguf};
use crate::Error;
use crate::config::LlamaConfig;
use crate::llama::Llama;
use crate::lora::LoraSpec;

/// The `adapter.lora.alpha` that makes llama.cpp's `alpha / r` equal `spec`'s scaling, or why
/// there is none.
pub fn llama_cpp_alpha(spec: &LoraSpec) -> Result<f32, String> {
    if spec.use_dora {
        return Err(
            "key `use_dora`: llama.cpp's LoRA adapters have no DoRA magnitude; \
            export the merged model as GGUF instead (`export gguf`)"
                .into(),
        );
    }
    if spec.alpha == 0.0 {
        return Err(
            "key `lora_alpha`: 0 cannot be written (llama.cpp reads alpha 0 as a scale of 1)"
                .into(),
        );
    }
    Ok(match spec.use_rslora {
        true => (spec.alpha * (spec.rank as f64).sqrt()) as f32,
        false => spec.alpha as f32,
    })
}

/// Writes the adapters attached to `model` (made with `spec`) as the new GGUF file `out`,
/// `A` and `B` stored as `ty` (F32, F16, BF16 or Q8_0; a pair whose rows are not whole blocks
/// falls back to F16).
pub fn write_adapter_gguf(
    model: &Llama,
    config: &LlamaConfig,
    spec: &LoraSpec,
    out: &Path,
    ty: GgmlType,
) -> Result<GgufSummary, Error> {
    let bad_spec = |m: String| Error::Usage(format!("adapter: {m}"));
    let alpha = llama_cpp_alpha(spec).map_err(bad_spec)?;
    let arch = gguf_architecture(config.family);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            MetaValue::Str(arch.into()),
        ),
        ("general.type".to_string(), MetaValue::Str("adapter".into())),
        ("adapter.type".to_string(), MetaValue::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(alpha)),
    ];
    let mut entries = Vec::new();
    let mut tensors: Vec<(Tensor<2>, usize)> = Vec::new(); // value, heads to permute by (0: none)
    let mut notes = Vec::new();
    for (path, linear) in model.projections() {
        let Some(lora) = &linear.lora else { continue };
        let base = gguf_name(&format!("{path}.weight"))
            .ok_or_else(|| Error::Usage(format!("adapter: `{path}` has no GGUF name")))?;
        let heads = qk_heads(config, &format!("{path}.weight")).unwrap_or(0);
        for (suffix, tensor, heads) in [
            ("lora_a", lora.lora_a.val(), 0),
            ("lora_b", lora.lora_b.val(), heads),
        ] {
            let [rows, cols] = tensor.dims();
            let name = format!("{base}.{suffix}");
            let mut tensor_ty = ty;
            if !cols.is_multiple_of(ty.block().0) {
                notes.push(format!(
                    "{name}: rows of {cols} values are not whole {ty:?} blocks; stored as F16"
                ));
                tensor_ty = GgmlType::F16;
            }
            entries.push(TensorEntry {
                name,
                shape: vec![rows, cols],
                ty: tensor_ty,
            });
            tensors.push((tensor, heads));
        }
    }
    if entries.is_empty() {
        return Err(Error::Usage(
            "adapter: the model has no LoRA adapter attached".into(),
        ));
    }
    write_gguf(out, &metadata, &entries, |i| {
        let (tensor, heads) = &tensors[i];
        let entry = &entries[i];
        let values = tensor
            .clone()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Usage(format!("cannot read tensor `{}`: {e:?}", entry.name)))?;
        let values = match *heads {
            0 => values,
            heads => permute_rows(&values, entry.shape[0], heads),
        };
        quantize(entry.ty, &values, entry.shape[1])
            .map_err(|m| Error::invalid(out, format!("tensor `{}`: {m}", entry.name)))
    })?;
    Ok(GgufSummary {
        tensors: entries.into_iter().map(|e| (e.name, e.ty)).collect(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alpha: f64, rank: usize, use_rslora: bool) -> LoraSpec {
        LoraSpec {
            rank,
            alpha,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            layers_to_transform: None,
            use_rslora,
            use_dora: false,
        }
    }

    #[test]
    fn alpha_over_rank_is_the_scaling() {
        for s in [
            spec(16.0, 8, false),
            spec(16.0, 8, true),
            spec(3.0, 4, true),
        ] {
            let alpha = llama_cpp_alpha(&s).unwrap() as f64;
            assert!((alpha / s.rank as f64 - s.scaling()).abs() < 1e-6, "{s:?}");
        }
        assert!(
            llama_cpp_alpha(&spec(0.0, 8, false))
                .unwrap_err()
                .starts_with("key `lora_alpha`: 0")
        );
        let dora = LoraSpec {
            use_dora: true,
            ..spec(16.0, 8, false)
        };
        assert!(llama_cpp_alpha(&dora).unwrap_err().contains("export gguf"));
    }
}
