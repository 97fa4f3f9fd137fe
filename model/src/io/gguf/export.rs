//! A model (adapters merged) as a GGUF file llama.cpp runs, laid out as llama.cpp's
//! `convert_hf_to_gguf.py` writes one: `general.*` and `{arch}.*` metadata (arch `llama` for
//! Llama and Mistral, `qwen2`, `qwen3`), Llama 3.x's RoPE scaling as `rope_freqs.weight`, q/k
//! rows in llama.cpp's order for `llama`, each tensor in the type llama-quantize would give it
//! ([`super::file_type`]), and the tokenizer as `tokenizer.ggml.*` ([`super::vocab`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;

use super::dequant::GgmlType;
use super::file_type::{GgufFileType, storage_types};
use super::names::gguf_name;
use super::qk_permute::{permute_rows, qk_heads};
use super::quantize::quantize;
use super::rope_freqs::llama3_factors;
use super::vocab::vocab_metadata;
use super::writer::{MetaValue, TensorEntry, write_gguf};
use crate::Error;
use crate::config::{Family, LlamaConfig, RopeScaling};
use crate::io::hf_export::merged_tensors;
use crate::llama::Llama;

/// `general.architecture` of a family.
pub fn gguf_architecture(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    /// Tensors written with their GGUF storage type, in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// Things the user should know (sliding windows llama.cpp does not apply, fallbacks).
    pub notes: Vec<String>,
}

/// Writes `model` (its adapters merged) with the tokenizer of `model_dir` as the new GGUF file
/// `out`, matrices in `ty`, `name` as `general.name`.
pub fn write_model_gguf(
    model: &Llama,
    config: &LlamaConfig,
    model_dir: &Path,
    name: &str,
    out: &Path,
    ty: GgufFileType,
) -> Result<GgufSummary, Error> {
    check_supported(config).map_err(|m| Error::invalid(model_dir.join("config.json"), m))?;
    let mut notes = Vec::new();
    if let Some(window) = config.sliding_window {
        notes.push(format!(
            "sliding window {window} is not in the GGUF: llama.cpp attends to the whole context, \
             so results equal ours only up to {window} tokens"
        ));
    }
    let mut metadata = model_metadata(config, name, ty);
    metadata.extend(vocab_metadata(model_dir, config)?);
    let tensors = merged_tensors(model);
    let order = tensor_order(config, &tensors);
    let shapes: Vec<_> = order
        .iter()
        .map(|(_, g, s)| (g.clone(), s.clone()))
        .collect();
    let chosen = storage_types(ty, &shapes, config.num_hidden_layers).map_err(Error::Usage)?;
    notes.extend(chosen.notes);
    let mut sources = Vec::new(); // HF name, or None for rope_freqs
    let mut entries = Vec::new();
    for ((hf, name, shape), ty) in order.into_iter().zip(chosen.types) {
        entries.push(TensorEntry { name, shape, ty });
        sources.push(hf);
    }
    write_gguf(out, &metadata, &entries, |i| {
        let entry = &entries[i];
        let values = match &sources[i] {
            Some(hf) => tensor_values(config, hf, &tensors[hf])?,
            None => rope_factors(config),
        };
        let row = entry.shape[entry.shape.len() - 1];
        quantize(entry.ty, &values, row)
            .map_err(|m| Error::invalid(out, format!("tensor `{}`: {m}", entry.name)))
    })?;
    Ok(GgufSummary {
        tensors: entries.into_iter().map(|e| (e.name, e.ty)).collect(),
        notes,
    })
}

/// What llama.cpp's `llama`, `qwen2` and `qwen3` graphs cannot run.
fn check_supported(config: &LlamaConfig) -> Result<(), String> {
    let arch = gguf_architecture(config.family);
    let refuse = |what: &str| {
        Err(format!(
            "{what}: llama.cpp's `{arch}` architecture has no place for it, so the GGUF would compute something else"
        ))
    };
    if config.mlp_bias {
        return refuse("key `mlp_bias` true (MLP biases)");
    }
    if config.qkv_bias && arch == "qwen3" {
        return refuse("key `attention_bias` true (q/k/v biases)");
    }
    if config.o_bias && arch != "llama" {
        return refuse("key `attention_bias` true (an o_proj bias)");
    }
    Ok(())
}

/// `general.*` and `{arch}.*`, as `convert_hf_to_gguf.py` writes them.
fn model_metadata(config: &LlamaConfig, name: &str, ty: GgufFileType) -> Vec<(String, MetaValue)> {
    let arch = gguf_architecture(config.family);
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut meta = vec![
        ("general.architecture".into(), MetaValue::Str(arch.into())),
        ("general.type".into(), MetaValue::Str("model".into())),
        ("general.name".into(), MetaValue::Str(name.into())),
    ];
    let keys = [
        ("block_count", u(config.num_hidden_layers)),
        ("context_length", u(config.max_position_embeddings)),
        ("embedding_length", u(config.hidden_size)),
        ("feed_forward_length", u(config.intermediate_size)),
        ("attention.head_count", u(config.num_attention_heads)),
        ("attention.head_count_kv", u(config.num_key_value_heads)),
        ("rope.freq_base", MetaValue::F32(config.rope.theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            MetaValue::F32(config.rms_norm_eps as f32),
        ),
        ("attention.key_length", u(config.head_dim)),
        ("attention.value_length", u(config.head_dim)),
        ("vocab_size", u(config.vocab_size)),
        ("rope.dimension_count", u(config.head_dim)),
    ];
    meta.extend(keys.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    meta.push(("general.file_type".into(), MetaValue::U32(ty.id())));
    meta.push(("general.quantization_version".into(), MetaValue::U32(2)));
    meta
}

/// (HF name or `None` for `rope_freqs.weight`, GGUF name, shape) in llama.cpp's file order:
/// embedding, RoPE factors, the layers in order, final norm, output.
fn tensor_order(
    config: &LlamaConfig,
    tensors: &BTreeMap<String, Tensor<2>>,
) -> Vec<(Option<String>, String, Vec<usize>)> {
    let entry = |hf: &str| {
        let [rows, cols] = tensors[hf].dims();
        let vector = hf.ends_with("norm.weight") || hf.ends_with(".bias");
        let shape = if vector {
            vec![rows * cols]
        } else {
            vec![rows, cols]
        };
        let gguf = gguf_name(hf).expect("every model tensor has a GGUF name");
        (Some(hf.to_string()), gguf, shape)
    };
    let mut order = vec![entry("model.embed_tokens.weight")];
    if matches!(config.rope.scaling, RopeScaling::Llama3(_)) {
        order.push((None, "rope_freqs.weight".into(), vec![config.head_dim / 2]));
    }
    for i in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{i}.");
        order.extend(
            tensors
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| entry(k)),
        );
    }
    order.push(entry("model.norm.weight"));
    if tensors.contains_key("lm_head.weight") {
        order.push(entry("lm_head.weight"));
    }
    order
}

/// The f32 values of HF tensor `hf`, q/k rows permuted for the `llama` architecture.
fn tensor_values(config: &LlamaConfig, hf: &str, tensor: &Tensor<2>) -> Result<Vec<f32>, Error> {
    let values = tensor
        .clone()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Usage(format!("cannot read tensor `{hf}`: {e:?}")))?;
    let Some(heads) = qk_heads(config, hf) else {
        return Ok(values);
    };
    let rows = match hf.ends_with(".bias") {
        true => values.len(),
        false => tensor.dims()[0],
    };
    Ok(permute_rows(&values, rows, heads))
}

/// `rope_freqs.weight`: Llama 3's frequency factors.
fn rope_factors(config: &LlamaConfig) -> Vec<f32> {
    match &config.rope.scaling {
        RopeScaling::Llama3(p) => llama3_factors(p, config.rope.theta, config.head_dim),
        RopeScaling::Default => unreachable!("rope_freqs.weight is only listed for llama3"),
    }
}
