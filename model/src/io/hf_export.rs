//! Writing a model with its adapters merged (`W + scaling · B A`) as a Hugging Face model
//! directory: safetensors (sharded with `model.safetensors.index.json` above a size limit),
//! `config.json` with both RoPE key forms, and the base model's tokenizer and generation files.
//! A tied model writes no `lm_head.weight`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::Tensor;
use serde_json::{Value, json};

use super::safetensors_out::{StoreDtype, write_safetensors};
use crate::Error;
use crate::config::{LlamaConfig, RopeScaling};
use crate::llama::Llama;

/// Files copied unchanged from the base model directory when present.
const COPIED_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Every tensor of the model under its HF name, adapters merged into their layers.
pub fn merged_tensors(model: &Llama) -> BTreeMap<String, Tensor<2>> {
    let mut out = BTreeMap::new();
    let mut vector = |name: String, p: &Param<Tensor<1>>| {
        let v = p.val();
        let len = v.dims()[0];
        out.insert(name, v.reshape([1, len]));
    };
    let m = &model.model;
    let device = m.norm.weight.val().device();
    vector("model.norm.weight".into(), &m.norm.weight);
    for (i, layer) in m.layers.iter().enumerate() {
        vector(
            format!("model.layers.{i}.input_layernorm.weight"),
            &layer.input_layernorm.weight,
        );
        vector(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm.weight,
        );
        let attn = &layer.self_attn;
        for (name, norm) in [("q_norm", &attn.q_norm), ("k_norm", &attn.k_norm)] {
            if let Some(norm) = norm {
                vector(
                    format!("model.layers.{i}.self_attn.{name}.weight"),
                    &norm.weight,
                );
            }
        }
    }
    for (name, linear) in model.projections() {
        let weight = match &linear.lora {
            Some(adapter) => adapter.merged_weight(linear.dense_weight(&device)),
            None => linear.dense_weight(&device),
        };
        out.insert(format!("{name}.weight"), weight);
        if let Some(bias) = &linear.bias {
            let v = bias.val();
            let len = v.dims()[0];
            out.insert(format!("{name}.bias"), v.reshape([1, len]));
        }
    }
    out.insert("model.embed_tokens.weight".into(), m.embed_tokens.val());
    if let Some(head) = &model.lm_head {
        out.insert("lm_head.weight".into(), head.val());
    }
    out
}

/// Writes the merged model into the empty directory `dir`, in `dtype`, in shards
/// of at most `max_shard_bytes` (one `model.safetensors` when it all fits).
pub fn write_merged(
    model: &Llama,
    config: &LlamaConfig,
    base_dir: &Path,
    dir: &Path,
    dtype: StoreDtype,
    max_shard_bytes: usize,
) -> Result<(), Error> {
    let tensors = merged_tensors(model);
    // Vectors were widened to [1, n] for one map; the file keeps their real shapes.
    let shape_of = |name: &str, t: &Tensor<2>| -> Vec<usize> {
        let [rows, cols] = t.dims();
        match name.ends_with("norm.weight") || name.ends_with(".bias") {
            true => vec![rows * cols],
            false => vec![rows, cols],
        }
    };
    let mut shards: Vec<BTreeMap<String, Vec<usize>>> = vec![BTreeMap::new()];
    let mut shard_bytes = 0;
    for (name, tensor) in &tensors {
        let shape = shape_of(name, tensor);
        let bytes = dtype.byte_len(&shape);
        if shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes {
            shards.push(BTreeMap::new());
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        shards
            .last_mut()
            .expect("one shard at least")
            .insert(name.clone(), shape);
    }
    let values = |name: &str| {
        tensors[name]
            .clone()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Usage(format!("cannot read tensor `{name}`: {e:?}")))
    };
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = match count {
            1 => "model.safetensors".to_string(),
            _ => format!("model-{:05}-of-{count:05}.safetensors", i + 1),
        };
        write_safetensors(&dir.join(&file), shard, dtype, values)?;
        for name in shard.keys() {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    if count > 1 {
        let total: usize = shards
            .iter()
            .flat_map(|s| s.values())
            .map(|shape| dtype.byte_len(shape))
            .sum();
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({ "metadata": { "total_size": total }, "weight_map": weight_map }),
        )?;
    }
    write_json(
        &dir.join("config.json"),
        &merged_config(base_dir, config, dtype)?,
    )?;
    for file in COPIED_FILES {
        let from = base_dir.join(file);
        if from.exists() {
            std::fs::copy(&from, dir.join(file)).map_err(|e| Error::io(&from, e))?;
        }
    }
    Ok(())
}

/// The base `config.json` with the dtype set and RoPE written in both the v4 and v5 forms.
fn merged_config(base_dir: &Path, config: &LlamaConfig, dtype: StoreDtype) -> Result<Value, Error> {
    let path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut json: Value =
        serde_json::from_str(&text).map_err(|e| Error::invalid(&path, e.to_string()))?;
    let theta = config.rope.theta;
    let (scaling, parameters) = match config.rope.scaling {
        RopeScaling::Default => (
            Value::Null,
            json!({ "rope_type": "default", "rope_theta": theta }),
        ),
        RopeScaling::Llama3(p) => {
            let fields = json!({
                "rope_type": "llama3", "factor": p.factor, "low_freq_factor": p.low_freq_factor,
                "high_freq_factor": p.high_freq_factor,
                "original_max_position_embeddings": p.original_max_position_embeddings as u64,
            });
            let mut parameters = fields.clone();
            parameters["rope_theta"] = json!(theta);
            (fields, parameters)
        }
    };
    let object = json
        .as_object_mut()
        .ok_or_else(|| Error::invalid(&path, "not a JSON object"))?;
    object.insert("rope_theta".into(), json!(theta));
    object.insert("rope_scaling".into(), scaling);
    object.insert("rope_parameters".into(), parameters);
    object.insert("torch_dtype".into(), json!(dtype.torch_name()));
    object.remove("dtype");
    Ok(json)
}

fn write_json(path: &Path, value: &Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes") + "\n";
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
