//! PEFT adapter directories: `adapter_config.json` and `adapter_model.safetensors` with PEFT's
//! tensor names (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, no
//! `.default.`; DoRA's magnitude `…q_proj.lora_magnitude_vector`, `[out]`), as
//! `PeftModel.from_pretrained` reads them — ours, and adapters PEFT trained.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use serde_json::json;

use super::safetensors_out::{StoreDtype, write_safetensors};
use crate::Error;
use crate::llama::Llama;
use crate::lora::{LoraAdapter, LoraSpec, TARGET_MODULES, wants_adapter};
use crate::weights::WeightFiles;

/// The adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

const PREFIX: &str = "base_model.model.";
/// DoRA's magnitude under a projection's path.
const MAGNITUDE: &str = "lora_magnitude_vector";

/// Writes the model's adapters (f32) and their config into `dir` (which must exist).
pub fn save_adapter(
    model: &Llama,
    spec: &LoraSpec,
    base_model: &str,
    dir: &Path,
) -> Result<(), Error> {
    let adapters = model.adapters();
    let mut shapes = BTreeMap::new();
    let mut values = BTreeMap::new();
    for (path, adapter) in &adapters {
        for (kind, tensor) in [
            ("lora_A.weight", adapter.lora_a.val()),
            ("lora_B.weight", adapter.lora_b.val()),
        ] {
            let name = format!("{PREFIX}{path}.{kind}");
            shapes.insert(name.clone(), tensor.dims().to_vec());
            values.insert(name, tensor);
        }
        if let Some(magnitude) = &adapter.magnitude {
            let name = format!("{PREFIX}{path}.{MAGNITUDE}");
            shapes.insert(name.clone(), vec![magnitude.val().dims()[1]]);
            values.insert(name, magnitude.val());
        }
    }
    write_safetensors(
        &dir.join(ADAPTER_WEIGHTS),
        &shapes,
        StoreDtype::F32,
        |name| {
            values[name]
                .clone()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::Usage(format!("cannot read adapter tensor `{name}`: {e:?}")))
        },
    )?;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": spec.target_modules,
        "layers_to_transform": spec.layers_to_transform,
        "use_rslora": spec.use_rslora,
        "use_dora": spec.use_dora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let path = dir.join(ADAPTER_CONFIG);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("JSON") + "\n",
    )
    .map_err(|e| Error::io(&path, e))
}

/// Reads `adapter_config.json` into a [`LoraSpec`]; what we cannot apply faithfully is an error.
pub fn read_adapter_spec(dir: &Path) -> Result<LoraSpec, Error> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&path, format!("invalid JSON: {e}")))?;
    let bad = |message: String| Error::invalid(&path, message);
    if config["peft_type"] != "LORA" {
        return Err(bad(format!(
            "key `peft_type`: {} is not LORA",
            config["peft_type"]
        )));
    }
    if config["fan_in_fan_out"] == true {
        return Err(bad("key `fan_in_fan_out`: true is not supported".into()));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if config[key].as_object().is_some_and(|o| !o.is_empty()) {
            return Err(bad(format!("key `{key}` is not supported")));
        }
    }
    // Keys whose non-default values change what the adapter computes: refuse them rather than
    // load an adapter that would give other results than in PEFT.
    for key in [
        "modules_to_save",
        "exclude_modules",
        "layer_replication",
        "layers_pattern",
        "target_parameters",
        "trainable_token_indices",
    ] {
        let set = match &config[key] {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            serde_json::Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if set {
            return Err(bad(format!(
                "key `{key}`: {} is not supported",
                config[key]
            )));
        }
    }
    if config["lora_bias"] == true {
        return Err(bad("key `lora_bias`: true is not supported".into()));
    }
    if config["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(bad(format!(
            "key `bias`: {} is not supported (only \"none\")",
            config["bias"]
        )));
    }
    let rank = config["r"]
        .as_u64()
        .filter(|r| *r > 0)
        .ok_or_else(|| bad("key `r` must be a positive integer".into()))?;
    let alpha = config["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("key `lora_alpha` must be a number".into()))?;
    let target_modules: Vec<String> = match &config["target_modules"] {
        serde_json::Value::String(s) if s == "all-linear" => {
            TARGET_MODULES.iter().map(|m| m.to_string()).collect()
        }
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        other => {
            return Err(bad(format!(
                "key `target_modules`: {other} is not a list of module names"
            )));
        }
    };
    if let Some(unknown) = target_modules
        .iter()
        .find(|t| !TARGET_MODULES.contains(&t.as_str()))
    {
        return Err(bad(format!(
            "key `target_modules`: `{unknown}` is not a Llama projection"
        )));
    }
    let layers_to_transform = match &config["layers_to_transform"] {
        serde_json::Value::Null => None,
        serde_json::Value::Number(n) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_u64().map(|l| l as usize))
                .collect(),
        ),
        other => {
            return Err(bad(format!(
                "key `layers_to_transform`: {other} is not supported"
            )));
        }
    };
    Ok(LoraSpec {
        rank: rank as usize,
        alpha,
        dropout: dropout(&config["lora_dropout"]).map_err(bad)?,
        target_modules,
        layers_to_transform,
        use_rslora: flag(&config, "use_rslora").map_err(bad)?,
        use_dora: flag(&config, "use_dora").map_err(bad)?,
    })
}

/// A boolean key of the config (false where absent or null).
fn flag(config: &serde_json::Value, key: &str) -> Result<bool, String> {
    match &config[key] {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::Bool(b) => Ok(*b),
        other => Err(format!("key `{key}`: {other} is not true or false")),
    }
}

/// `lora_dropout` (PEFT's default 0 where absent): a probability in [0, 1). PyTorch's
/// `nn.Dropout` also takes 1, which zeroes the adapter's whole input while training, so that
/// the adapter never learns; feinschliff refuses it, as its run config's `lora.dropout` and
/// Burn's `Dropout` do (the value matters when training resumes from a checkpoint).
fn dropout(value: &serde_json::Value) -> Result<f64, String> {
    match value {
        serde_json::Value::Null => Ok(0.0),
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|p| (0.0..1.0).contains(p))
            .ok_or_else(|| format!("key `lora_dropout`: {n} is not in [0, 1)")),
        other => Err(format!("key `lora_dropout`: {other} is not a number")),
    }
}

/// Attaches the adapter stored in `dir` to `model`: every adapter tensor must fit a projection
/// of this model, and every projection the config targets must have its tensors.
pub fn load_adapter(model: &mut Llama, dir: &Path, device: &Device) -> Result<LoraSpec, Error> {
    let spec = read_adapter_spec(dir)?;
    let mut weights = WeightFiles::open_file(&dir.join(ADAPTER_WEIGHTS))?;
    for (path, proj) in model.projections_mut() {
        if !wants_adapter(&path, &spec) {
            continue;
        }
        let [out_features, in_features] = proj.dims();
        let a = weights.take(
            &format!("{PREFIX}{path}.lora_A.weight"),
            [spec.rank, in_features],
            device,
        )?;
        let b = weights.take(
            &format!("{PREFIX}{path}.lora_B.weight"),
            [out_features, spec.rank],
            device,
        )?;
        let magnitude = match spec.use_dora {
            true => {
                let name = format!("{PREFIX}{path}.{MAGNITUDE}");
                let m: Tensor<1> = weights.take(&name, [out_features], device)?;
                Some(m.reshape([1, out_features]))
            }
            false => None,
        };
        proj.lora = Some(LoraAdapter::from_tensors(
            &path, a, b, magnitude, &spec, device,
        ));
    }
    weights.finish()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an adapter config whose `lora_dropout` is `dropout` (JSON text).
    fn spec_with_dropout(dropout: &str) -> Result<LoraSpec, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "lora_dropout": {dropout}}}"#
        );
        std::fs::write(dir.path().join(ADAPTER_CONFIG), config).unwrap();
        read_adapter_spec(dir.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn lora_dropout_must_be_a_probability_below_one() {
        assert_eq!(spec_with_dropout("0.1").unwrap().dropout, 0.1);
        assert_eq!(spec_with_dropout("0").unwrap().dropout, 0.0);
        assert_eq!(spec_with_dropout("null").unwrap().dropout, 0.0);
        for bad in ["1.5", "1", "1.0", "-0.1", "\"0.1\""] {
            let message = spec_with_dropout(bad).unwrap_err();
            assert!(
                message.contains(ADAPTER_CONFIG) && message.contains("key `lora_dropout`"),
                "{bad}: {message}"
            );
        }
    }
}
