//! `import-gguf`: a GGUF file (llama.cpp's format) of architecture `llama` (Llama, Mistral),
//! `qwen2` or `qwen3` becomes a complete Hugging Face model directory — `config.json`,
//! `generation_config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` —
//! that transformers and feinschliff load.
//!
//! Tensor names are mapped back to HF names, and for `llama` the q/k rows that llama.cpp's
//! converter interleaves for its RoPE are put back in HF order (Qwen's GGUFs use the NEOX
//! rotation, which is HF's, and are not permuted). Llama 3.x's `rope_freqs.weight` becomes the
//! `llama3` RoPE scaling whose frequency factors it holds (see [`super::rope_freqs`]).
//! Everything is written into a temporary directory beside the output and renamed at the end:
//! a failed import leaves nothing under the output's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::names::hf_name;
use super::qk_permute::{qk_heads, unpermute_rows};
use super::tokenizer::{TokenizerFiles, convert_tokenizer};
use super::{GgufFile, Value, rope_freqs};
use crate::Error;
use crate::config::{Family, LlamaConfig};
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

/// The architecture read from `{arch}.*` metadata: validated, and as `config.json` text.
pub(crate) struct Arch {
    /// The validated architecture.
    pub config: LlamaConfig,
    /// Its `config.json`.
    pub json: Json,
}

/// A GGUF file with what its metadata and tensor directory say as a Hugging Face model.
pub(crate) struct GgufModel {
    /// The open file.
    pub file: GgufFile,
    /// The architecture.
    pub arch: Arch,
    /// GGUF tensor name -> (HF name, row-major shape), every tensor checked against `arch`.
    pub names: BTreeMap<String, (String, Vec<usize>)>,
    /// The tokenizer as `tokenizer.json` and `tokenizer_config.json`.
    pub tokenizer: TokenizerFiles,
}

impl GgufModel {
    /// Opens `gguf` and reads its architecture, tensor names and tokenizer; `dtype` is the
    /// `torch_dtype` its `config.json` names. Errors name the file.
    pub fn read(gguf: &Path, dtype: StoreDtype) -> Result<Self, Error> {
        let file = GgufFile::open(gguf)?;
        let bad = |message: String| Error::invalid(gguf, message);
        let arch = architecture(&file, dtype).map_err(bad)?;
        let names = hf_names(&file, &arch.config).map_err(bad)?;
        let tokenizer = convert_tokenizer(&file.metadata, &arch.json).map_err(bad)?;
        Ok(Self {
            file,
            arch,
            names,
            tokenizer,
        })
    }

    /// Writes the model's files other than its weights into `dir`: `config.json`,
    /// `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`.
    pub fn write_files(&self, dir: &Path) -> Result<(), Error> {
        let write_json = |name: &str, value: &Json| {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(value).expect("JSON serializes") + "\n";
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
        };
        let json = &self.arch.json;
        write_json("config.json", json)?;
        let generation = json!({
            "bos_token_id": json["bos_token_id"],
            "eos_token_id": json["eos_token_id"],
            "pad_token_id": json["pad_token_id"],
        });
        write_json("generation_config.json", &generation)?;
        write_json("tokenizer.json", &self.tokenizer.tokenizer)?;
        write_json("tokenizer_config.json", &self.tokenizer.tokenizer_config)
    }
}

/// The `config.json` keys the import derives from GGUF metadata or tensors, with where they
/// come from (`ARCH` standing for `general.architecture`), for errors that name what the file
/// says.
const KEY_SOURCES: [(&str, &str); 11] = [
    ("vocab_size", "rows of `token_embd.weight`"),
    ("hidden_size", "`ARCH.embedding_length`"),
    ("intermediate_size", "`ARCH.feed_forward_length`"),
    ("num_hidden_layers", "`ARCH.block_count`"),
    ("num_attention_heads", "`ARCH.attention.head_count`"),
    ("num_key_value_heads", "`ARCH.attention.head_count_kv`"),
    ("head_dim", "`ARCH.attention.key_length`"),
    ("rms_norm_eps", "`ARCH.attention.layer_norm_rms_epsilon`"),
    ("rope_theta", "`ARCH.rope.freq_base`"),
    ("bos_token_id", "`tokenizer.ggml.bos_token_id`"),
    ("eos_token_id", "`tokenizer.ggml.eos_token_id`"),
];

/// The family of a `general.architecture`; Mistral's GGUFs are `llama`.
fn family_of(arch: &str) -> Option<Family> {
    match arch {
        "llama" => Some(Family::Llama),
        "qwen2" => Some(Family::Qwen2),
        "qwen3" => Some(Family::Qwen3),
        _ => None,
    }
}

/// Converts `gguf` into a new model directory `out_dir` (which must not exist yet).
pub fn import_gguf(gguf: &Path, out_dir: &Path, dtype: StoreDtype) -> Result<ImportSummary, Error> {
    if std::fs::symlink_metadata(out_dir).is_ok() {
        return Err(Error::invalid(
            out_dir,
            "already exists; remove it or choose another output directory",
        ));
    }
    let model = GgufModel::read(gguf, dtype)?;
    write_new_dir(out_dir, |temp| write_model_dir(&model, dtype, temp))?;
    let parameters = model
        .names
        .values()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        tensors: model.names.len(),
        parameters,
        notes: model.tokenizer.notes,
    })
}

fn write_model_dir(model: &GgufModel, dtype: StoreDtype, dir: &Path) -> Result<(), Error> {
    model.write_files(dir)?;
    // HF name -> (GGUF name, shape), written in HF name order.
    let by_hf: BTreeMap<&String, (&String, &Vec<usize>)> = model
        .names
        .iter()
        .map(|(gguf_name, (hf, shape))| (hf, (gguf_name, shape)))
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = by_hf
        .iter()
        .map(|(hf, (_, shape))| ((*hf).clone(), (*shape).clone()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &shapes, dtype, |hf_name| {
        let (gguf_name, shape) = by_hf[&hf_name.to_string()];
        let values = model.file.tensor_f32(gguf_name)?;
        Ok(match qk_heads(&model.arch.config, hf_name) {
            Some(heads) => unpermute_rows(&values, shape[0], heads),
            None => values,
        })
    })
}

/// Reads an unsigned integer metadata value.
fn uint(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Uint(v)) => usize::try_from(*v).map(Some).map_err(|_| too_big(key, v)),
        Some(Value::Int(v)) if *v >= 0 => {
            usize::try_from(*v).map(Some).map_err(|_| too_big(key, v))
        }
        Some(other) => Err(format!(
            "metadata `{key}` must be an unsigned integer, got {other:?}"
        )),
    }
}

fn too_big(key: &str, value: impl std::fmt::Display) -> String {
    format!("metadata `{key}` = {value} does not fit in memory sizes")
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
    let (name, family) = match meta.get("general.architecture") {
        Some(Value::String(a)) => match family_of(a) {
            Some(family) => (a.as_str(), family),
            None => {
                return Err(format!(
                    "architecture `{a}` is not supported (supported: llama, qwen2, qwen3)"
                ));
            }
        },
        _ => return Err("metadata `general.architecture` is missing".into()),
    };
    let key = |suffix: &str| format!("{name}.{suffix}");
    let hidden = required(meta, &key("embedding_length"))?;
    let heads = required(meta, &key("attention.head_count"))?;
    let head_dim = head_dim(meta, name, hidden, heads)?;
    if let Some(Value::String(kind)) = meta.get(&key("rope.scaling.type"))
        && kind != "none"
    {
        return Err(format!(
            "RoPE scaling `{kind}` (`{name}.rope.scaling.type`) is not supported"
        ));
    }
    let theta = float(meta, &key("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = match file.tensors.contains_key("rope_freqs.weight") {
        true => llama3_rope(file, theta, head_dim)?,
        false => Json::Null,
    };
    let embed = file
        .tensors
        .get("token_embd.weight")
        .ok_or("tensor `token_embd.weight` is missing")?;
    let vocab = embed.shape()[0];
    if let Some(v) = uint(meta, &key("vocab_size"))?
        && v != vocab
    {
        return Err(format!(
            "`{name}.vocab_size` {v} differs from token_embd.weight's {vocab} rows"
        ));
    }
    let token_id = |key: &str| uint(meta, key).map(|v| v.map(|id| id as u64));
    let bias = |suffix: &str| file.tensors.keys().any(|name| name.ends_with(suffix));
    let json = json!({
        "architectures": [family.architecture()],
        "model_type": family.model_type(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": required(meta, &key("feed_forward_length"))?,
        "num_hidden_layers": required(meta, &key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": uint(meta, &key("attention.head_count_kv"))?.unwrap_or(heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": uint(meta, &key("context_length"))?.unwrap_or(2048),
        "rms_norm_eps": float(meta, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32 as f64,
        "rope_theta": theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": !file.tensors.contains_key("output.weight"),
        "attention_bias": bias(".attn_q.bias"),
        "mlp_bias": bias(".ffn_up.bias"),
        "use_sliding_window": false,
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id")?,
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id")?,
        "torch_dtype": dtype.torch_name(),
    });
    let config = LlamaConfig::from_json(&json.to_string()).map_err(|message| {
        let source = KEY_SOURCES
            .iter()
            .find(|(key, _)| message.contains(&format!("`{key}`")))
            .map_or(String::new(), |(_, source)| {
                format!(" (from {})", source.replace("ARCH", name))
            });
        format!("the architecture in the metadata is invalid: {message}{source}")
    })?;
    Ok(Arch { config, json })
}

/// The width of one attention head: `{arch}.attention.key_length`, else hidden / heads; the
/// value width and the rotated width must equal it.
fn head_dim(
    meta: &BTreeMap<String, Value>,
    arch: &str,
    hidden: usize,
    heads: usize,
) -> Result<usize, String> {
    let head_dim = match uint(meta, &format!("{arch}.attention.key_length"))? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(format!(
                "embedding_length {hidden} is not a multiple of head_count {heads}"
            ));
        }
    };
    if let Some(v) = uint(meta, &format!("{arch}.attention.value_length"))?
        && v != head_dim
    {
        return Err(format!(
            "`{arch}.attention.value_length` {v} differs from key_length {head_dim}"
        ));
    }
    if let Some(rot) = uint(meta, &format!("{arch}.rope.dimension_count"))?
        && rot != head_dim
    {
        return Err(format!(
            "partial rotary embedding (`{arch}.rope.dimension_count` {rot} of {head_dim}) is not supported"
        ));
    }
    Ok(head_dim)
}

/// The `rope_scaling` of `config.json` for the factors in `rope_freqs.weight`.
fn llama3_rope(file: &GgufFile, theta: f64, head_dim: usize) -> Result<Json, String> {
    let info = &file.tensors["rope_freqs.weight"];
    if info.shape() != [head_dim / 2] {
        return Err(format!(
            "tensor `rope_freqs.weight` has shape {:?}, expected [{}] (head_dim / 2)",
            info.shape(),
            head_dim / 2
        ));
    }
    let factors = file
        .tensor_f32("rope_freqs.weight")
        .map_err(|e| e.to_string())?;
    let p = rope_freqs::llama3_parameters(&factors, theta, head_dim).ok_or(
        "tensor `rope_freqs.weight`: its frequency factors are not Llama 3's RoPE scaling for any \
         factor, low/high frequency factor and original context length we know",
    )?;
    Ok(json!({
        "rope_type": "llama3",
        "factor": p.factor,
        "low_freq_factor": p.low_freq_factor,
        "high_freq_factor": p.high_freq_factor,
        "original_max_position_embeddings": p.original_max_position_embeddings as u64,
    }))
}

/// GGUF tensor name → (HF name, HF shape), every shape checked against the architecture before
/// any data is read: a tensor we do not know, one with no place in this architecture or of
/// another shape, two names for one HF tensor and a missing tensor are errors naming them.
fn hf_names(
    file: &GgufFile,
    config: &LlamaConfig,
) -> Result<BTreeMap<String, (String, Vec<usize>)>, String> {
    let mut names = BTreeMap::new();
    let mut by_hf: BTreeMap<String, &String> = BTreeMap::new();
    for (name, info) in &file.tensors {
        if name == "rope_freqs.weight" {
            continue; // read into the RoPE settings by `llama3_rope`
        }
        let hf = hf_name(name)
            .ok_or_else(|| format!("tensor `{name}` has no Hugging Face Llama counterpart"))?;
        if let Some(other) = by_hf.insert(hf.clone(), name) {
            return Err(format!("tensors `{other}` and `{name}` are both `{hf}`"));
        }
        let expected = config.tensor_shape(&hf).ok_or_else(|| {
            format!(
                "tensor `{name}` ({hf}) has no place in this architecture ({} {} layers, \
                 q/k/v bias {}, MLP bias {})",
                config.num_hidden_layers,
                config.family.model_type(),
                config.qkv_bias,
                config.mlp_bias
            )
        })?;
        let shape = info.shape();
        if shape != expected {
            return Err(format!(
                "tensor `{name}` has shape {shape:?}, the architecture in the metadata expects {expected:?}"
            ));
        }
        names.insert(name.clone(), (hf, shape));
    }
    if let Some(missing) = first_missing(config, &by_hf) {
        return Err(format!("tensor for `{missing}` is missing"));
    }
    Ok(names)
}

/// The first tensor of the architecture that `present` (HF names) lacks. Every present name is
/// a distinct tensor of the architecture, so the search ends within a layer past the last
/// complete one, however many layers the metadata claims.
fn first_missing<T>(config: &LlamaConfig, present: &BTreeMap<String, T>) -> Option<String> {
    let top = ["model.embed_tokens.weight", "model.norm.weight"].map(String::from);
    let layers = (0..config.num_hidden_layers).flat_map(|i| config.layer_tensor_names(i));
    top.into_iter()
        .chain(layers)
        .find(|name| !present.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tiny_llama.gguf (2 layers) with its architecture.
    fn tiny() -> (GgufFile, LlamaConfig) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/tiny_llama.gguf");
        let file = GgufFile::open(&path).unwrap();
        let arch = architecture(&file, StoreDtype::F32).unwrap();
        (file, arch.config)
    }

    #[test]
    fn every_tensor_is_checked_against_the_architecture() {
        let (mut file, config) = tiny();
        assert_eq!(hf_names(&file, &config).unwrap().len(), file.tensors.len());
        let norm = file.tensors["blk.1.attn_norm.weight"].clone();
        let error = |file: &GgufFile| hf_names(file, &config).unwrap_err();

        file.tensors
            .insert("blk.2.attn_norm.weight".into(), norm.clone());
        assert!(error(&file).starts_with(
            "tensor `blk.2.attn_norm.weight` (model.layers.2.input_layernorm.weight) has no place"
        ));
        file.tensors.remove("blk.2.attn_norm.weight");

        file.tensors
            .insert("blk.+1.attn_norm.weight".into(), norm.clone());
        assert_eq!(
            error(&file),
            "tensors `blk.+1.attn_norm.weight` and `blk.1.attn_norm.weight` are both `model.layers.1.input_layernorm.weight`"
        );
        file.tensors.remove("blk.+1.attn_norm.weight");

        file.tensors.remove("blk.1.ffn_up.weight");
        assert_eq!(
            error(&file),
            "tensor for `model.layers.1.mlp.up_proj.weight` is missing"
        );
        file.tensors.insert("blk.1.ffn_up.weight".into(), norm);
        assert_eq!(
            error(&file),
            "tensor `blk.1.ffn_up.weight` has shape [32], the architecture in the metadata expects [64, 32]"
        );
    }

    #[test]
    fn absurd_sizes_in_the_metadata_name_their_key() {
        let (mut file, _) = tiny();
        file.metadata
            .insert("llama.block_count".into(), Value::Uint(1 << 60));
        let message = architecture(&file, StoreDtype::F32).err().unwrap();
        assert!(
            message.contains("key `num_hidden_layers`: the model's sizes overflow")
                && message.ends_with("(from `llama.block_count`)"),
            "{message}"
        );
    }
}
