//! The arguments that name a model to run (`eval`, `generate`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::backend::{Device, DeviceChoice};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::peft::load_adapter;
use feinschliff_model::linear::BaseStorage;
use feinschliff_model::quant::BaseQuant;

/// The model, its device and an optional adapter.
#[derive(Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json), or a GGUF file.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_name = "NAME")]
    device: DeviceChoice,
    /// A PEFT LoRA adapter directory to apply on top of the model (ours or PEFT's).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Keep the model's projections quantized as a run with this `model.base_quant` did
    /// (an adapter trained on a quantized base is evaluated on that base); default `none`, or
    /// the configuration's with `eval --config`.
    #[arg(long, value_parser = parse_base_quant, value_name = "none|q8_0|q4_k|nf4")]
    base_quant: Option<BaseQuant>,
}

/// A `--base-quant` value.
fn parse_base_quant(text: &str) -> Result<BaseQuant, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("`{text}`: one of none, q8_0, q4_k, nf4"))
}

impl ModelArgs {
    /// The model, with the adapter applied when one is given, its projections quantized as
    /// `--base-quant` says, else as `default_quant`; refused when `tokenizer` can give ids past
    /// its vocabulary.
    pub fn load(
        &self,
        tokenizer: &TextTokenizer,
        default_quant: BaseQuant,
    ) -> Result<(HfModel, Device)> {
        let device = self.device.device();
        let storage = BaseStorage {
            quant: self.base_quant.unwrap_or(default_quant),
            ..BaseStorage::default()
        };
        let mut loaded = HfModel::load_as(&self.model, storage, &device)?;
        loaded.check_tokenizer(tokenizer)?;
        if let Some(adapter) = &self.adapter {
            load_adapter(&mut loaded.model, adapter, &device)?;
        }
        Ok((loaded, device))
    }
}
