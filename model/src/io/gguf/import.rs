//! `import-gguf`: a Llama GGUF file (llama.cpp's format) becomes a complete Hugging Face model
//! directory — `config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` — that transformers and feinschliff load.
//!
//! Tensor names are mapped back to HF names and the q/k rows that llama.cpp's converter
//! interleaves for its RoPE are put back in HF order. Everything is written into a temporary
//! directory beside the output and renamed at the end: a failed import leaves nothing under
//! the output's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::tokenizer::{TokenizerFiles, convert_tokenizer};
use super::{GgufFile, Value};
use crate::Error;
use crate::io::new_dir::write_new_dir;
use crate::io::safetensors_out::{StoreDtype, write_safetensors};

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The model directory.
    pub out_dir: PathBuf,
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of parameters.
    pub parameters: usize,
    /// Things the user should know about the conversion.
    pub notes: Vec<String>,
}

/// The architecture read from `llama.*` metadata.
struct Arch {
    heads: usize,
    kv_heads: usize,
    config: Json,
}

/// Converts `gguf` into a new model directory `out_dir` (which must not exist yet).
pub fn import_gguf(gguf: &Path, out_dir: &Path, dtype: StoreDtype) -> Result<ImportSummary, Error> {
    if std::fs::symlink_metadata(out_dir).is_ok() {
        return Err(Error::invalid(
            out_dir,
            "already exists; remove it or choose another output directory",
        ));
    }
    let file = GgufFile::open(gguf)?;
    let bad = |message: String| Error::invalid(gguf, message);
    let arch = architecture(&file, dtype).map_err(bad)?;
    let names = hf_names(&file).map_err(bad)?;
    let tokenizer = convert_tokenizer(&file.metadata, &arch.config).map_err(bad)?;

    write_new_dir(out_dir, |temp| {
        write_model_dir(&file, &arch, &names, &tokenizer, dtype, temp)
    })?;
    let parameters = names
        .values()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        tensors: names.len(),
        parameters,
        notes: tokenizer.notes,
    })
}

fn write_model_dir(
    file: &GgufFile,
    arch: &Arch,
    names: &BTreeMap<String, (String, Vec<usize>)>,
    tokenizer: &TokenizerFiles,
    dtype: StoreDtype,
    dir: &Path,
) -> Result<(), Error> {
    let write_json = |name: &str, value: &Json| {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON serializes") + "\n";
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    write_json("config.json", &arch.config)?;
    let generation = json!({
        "bos_token_id": arch.config["bos_token_id"],
        "eos_token_id": arch.config["eos_token_id"],
        "pad_token_id": arch.config["pad_token_id"],
    });
    write_json("generation_config.json", &generation)?;
    write_json("tokenizer.json", &tokenizer.tokenizer)?;
    write_json("tokenizer_config.json", &tokenizer.tokenizer_config)?;

    // HF name -> (GGUF name, shape), written in HF name order.
    let by_hf: BTreeMap<&String, (&String, &Vec<usize>)> = names
        .iter()
        .map(|(gguf_name, (hf, shape))| (hf, (gguf_name, shape)))
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = by_hf
        .iter()
        .map(|(hf, (_, shape))| ((*hf).clone(), (*shape).clone()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &shapes, dtype, |hf_name| {
        let (gguf_name, shape) = by_hf[&hf_name.to_string()];
        let values = file.tensor_f32(gguf_name)?;
        Ok(if hf_name.contains(".self_attn.q_proj.") {
            unpermute_rows(values, shape, arch.heads)
        } else if hf_name.contains(".self_attn.k_proj.") {
            unpermute_rows(values, shape, arch.kv_heads)
        } else {
            values
        })
    })
}

/// Undoes llama.cpp's q/k permutation: within each head, GGUF row `2j + i` is HF row
/// `i · half + j` (HF pairs dim `j` with `j + half` for RoPE, llama.cpp pairs `2j` with `2j+1`).
fn unpermute_rows(values: Vec<f32>, shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let width: usize = shape[1..].iter().product();
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        let base = h * 2 * half;
        for j in 0..half {
            for i in 0..2 {
                let from = (base + 2 * j + i) * width;
                let to = (base + i * half + j) * width;
                out[to..to + width].copy_from_slice(&values[from..from + width]);
            }
        }
    }
    out
}

/// Reads an unsigned integer metadata value.
fn uint(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Uint(v)) => Ok(Some(*v as usize)),
        Some(Value::Int(v)) if *v >= 0 => Ok(Some(*v as usize)),
        Some(other) => Err(format!(
            "metadata `{key}` must be an unsigned integer, got {other:?}"
        )),
    }
}

fn required(meta: &BTreeMap<String, Value>, key: &str) -> Result<usize, String> {
    uint(meta, key)?
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("metadata `{key}` is missing or zero"))
}

fn float(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Float(v)) => Ok(Some(*v)),
        Some(other) => Err(format!("metadata `{key}` must be a float, got {other:?}")),
    }
}

fn architecture(file: &GgufFile, dtype: StoreDtype) -> Result<Arch, String> {
    let meta = &file.metadata;
    match meta.get("general.architecture") {
        Some(Value::String(a)) if a == "llama" => {}
        Some(Value::String(a)) => {
            return Err(format!(
                "architecture `{a}` is not supported (only `llama`)"
            ));
        }
        _ => return Err("metadata `general.architecture` is missing".into()),
    }
    let hidden = required(meta, "llama.embedding_length")?;
    let heads = required(meta, "llama.attention.head_count")?;
    let kv_heads = uint(meta, "llama.attention.head_count_kv")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!(
            "`llama.attention.head_count_kv` {kv_heads} does not divide head_count {heads}"
        ));
    }
    let head_dim = match uint(meta, "llama.attention.key_length")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(format!(
                "embedding_length {hidden} is not a multiple of head_count {heads}"
            ));
        }
    };
    if let Some(v) = uint(meta, "llama.attention.value_length")?
        && v != head_dim
    {
        return Err(format!(
            "`llama.attention.value_length` {v} differs from key_length {head_dim}"
        ));
    }
    if let Some(rot) = uint(meta, "llama.rope.dimension_count")?
        && rot != head_dim
    {
        return Err(format!(
            "partial rotary embedding (`llama.rope.dimension_count` {rot} of {head_dim}) is not supported"
        ));
    }
    if let Some(Value::String(kind)) = meta.get("llama.rope.scaling.type")
        && kind != "none"
    {
        return Err(format!(
            "RoPE scaling `{kind}` (`llama.rope.scaling.type`) is not supported"
        ));
    }
    if file.tensors.contains_key("rope_freqs.weight") {
        return Err(
            "tensor `rope_freqs.weight` (Llama 3.1 RoPE frequency factors) is not supported yet"
                .into(),
        );
    }
    let embed = file
        .tensors
        .get("token_embd.weight")
        .ok_or("tensor `token_embd.weight` is missing")?;
    let vocab = embed.shape()[0];
    if let Some(v) = uint(meta, "llama.vocab_size")?
        && v != vocab
    {
        return Err(format!(
            "`llama.vocab_size` {v} differs from token_embd.weight's {vocab} rows"
        ));
    }
    let token_id = |key: &str| uint(meta, key).map(|v| v.map(|id| id as u64));
    let bias = |suffix: &str| file.tensors.keys().any(|name| name.ends_with(suffix));
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": required(meta, "llama.feed_forward_length")?,
        "num_hidden_layers": required(meta, "llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": uint(meta, "llama.context_length")?.unwrap_or(2048),
        "rms_norm_eps": float(meta, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32 as f64,
        "rope_theta": float(meta, "llama.rope.freq_base")?.unwrap_or(10_000.0),
        "rope_scaling": null,
        "tie_word_embeddings": !file.tensors.contains_key("output.weight"),
        "attention_bias": bias(".attn_q.bias"),
        "mlp_bias": bias(".ffn_up.bias"),
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id")?,
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id")?,
        "torch_dtype": dtype.torch_name(),
    });
    Ok(Arch {
        heads,
        kv_heads,
        config,
    })
}

/// GGUF tensor name → (HF name, HF shape); a tensor we do not know is an error naming it.
fn hf_names(file: &GgufFile) -> Result<BTreeMap<String, (String, Vec<usize>)>, String> {
    let mut names = BTreeMap::new();
    for (name, info) in &file.tensors {
        let hf = hf_name(name)
            .ok_or_else(|| format!("tensor `{name}` has no Hugging Face Llama counterpart"))?;
        names.insert(name.clone(), (hf, info.shape()));
    }
    Ok(names)
}

fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, width).swapaxes(1, 2).reshape(rows, width)
        let (heads, half, width) = (3, 4, 2);
        let rows = heads * 2 * half;
        let hf: Vec<f32> = (0..rows * width).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..half {
                    let from = (h * 2 * half + i * half + j) * width;
                    let to = (h * 2 * half + j * 2 + i) * width;
                    permuted[to..to + width].copy_from_slice(&hf[from..from + width]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(permuted, &[rows, width], heads), hf);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
    }
}
