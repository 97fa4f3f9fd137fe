//! The run configuration: a TOML file with sections `model`, `lora`, `data`, `train` and
//! `output`. Every key has a default (documented on its field) except the model and training
//! data paths; an unknown key is an error naming it. `--set section.key=value` overrides a key
//! before validation, and the resolved configuration is written into the run directory.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use feinschliff_data::config::{DataConfig, Files, Format};

use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::lora::{LoraSpec, TARGET_MODULES};
use feinschliff_model::quant::BaseQuant;

use crate::Error;
use crate::dpo::loss::{DpoLoss, DpoSettings};
use crate::pass::backprop::MlpActivations;

/// A whole run configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The base model.
    pub model: ModelSection,
    /// The adapters.
    #[serde(default)]
    pub lora: LoraSection,
    /// The training and validation data.
    pub data: DataConfig,
    /// The optimisation.
    #[serde(default)]
    pub train: TrainSection,
    /// Where results go.
    #[serde(default)]
    pub output: OutputSection,
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory of the base model (required).
    pub path: PathBuf,
    /// Compute backend: `flex`, or with `--features tch` `tch-cpu` / `tch-cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Dtype the frozen base's matrices (projections, embedding, output head) are stored in.
    /// Adapters and the optimizer state are f32 whatever this says.
    #[serde(default)]
    pub base_dtype: DtypeChoice,
    /// Dtype training (the training pass, validation, samples) computes the frozen base's
    /// matrix products in; weights stored in another dtype are cast to it one matrix at a time.
    #[serde(default)]
    pub matmul_dtype: DtypeChoice,
    /// How the frozen projections are kept: dense (`none`), or quantized (`q8_0`, `q4_k`,
    /// `nf4`) and dequantized a tile at a time inside their products.
    #[serde(default)]
    pub base_quant: BaseQuant,
}

/// `model.base_dtype` and `model.matmul_dtype`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// Decided at start-up (`base_products`): bf16 on CUDA and on tch-cpu with AMX, and on a
    /// CPU where a probe measures bf16 products faster than f32 ones; f32 elsewhere.
    /// `base_dtype = "auto"` follows the products' dtype (and is bf16 on CUDA).
    #[default]
    Auto,
    /// f32.
    F32,
    /// bf16.
    Bf16,
}

/// `f32` or `bf16`, the dtypes a frozen base can have, as the configuration spells them.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The dtype named `name` (`f32` or `bf16`).
pub fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

impl DtypeChoice {
    fn resolve(self, auto: DType) -> DType {
        match self {
            DtypeChoice::Auto => auto,
            DtypeChoice::F32 => DType::F32,
            DtypeChoice::Bf16 => DType::BF16,
        }
    }
}

impl ModelSection {
    /// The dtypes the frozen base is stored in and multiplied in when training on `device`
    /// (see [`Llama::set_base_dtypes`]), `auto_products` standing for an `auto` product dtype
    /// and an `auto` base dtype following the products' (bf16 on CUDA); an error when the
    /// device cannot multiply in bf16.
    ///
    /// [`Llama::set_base_dtypes`]: feinschliff_model::llama::Llama::set_base_dtypes
    pub fn base_dtypes(
        &self,
        device: DeviceChoice,
        auto_products: DType,
    ) -> Result<(DType, DType), Error> {
        let products = self.matmul_dtype.resolve(auto_products);
        if products == DType::BF16 && !device.has_bf16_matmul() {
            return Err(Error::Usage(format!(
                "model.matmul_dtype = \"bf16\": {device} multiplies in f32 on this CPU (bf16 \
                 products need AVX512-BF16 on flex, or a LibTorch device: tch-cpu, tch-cuda:N)"
            )));
        }
        // A base on CUDA is kept in bf16 unless said otherwise (GPU memory); elsewhere an
        // `auto` base is kept in the dtype it multiplies in, so bf16 products need no cast.
        let storage_auto = match device.is_cuda() {
            true => DType::BF16,
            false => products,
        };
        Ok((self.base_dtype.resolve(storage_auto), products))
    }
}

/// `[lora]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Rank (default 16).
    pub r: usize,
    /// `lora_alpha` (default 32).
    pub alpha: f64,
    /// Dropout on the adapter input (default 0.05).
    pub dropout: f64,
    /// PEFT module names, or `["all-linear"]` for all seven projections (default: all seven).
    pub target_modules: Vec<String>,
    /// Layer indices that get adapters; empty = all layers (default).
    pub layers_to_transform: Vec<usize>,
    /// rsLoRA scaling alpha/√r instead of alpha/r (default false).
    pub use_rslora: bool,
    /// DoRA: a trained magnitude per output row besides A and B (default false).
    pub use_dora: bool,
}

/// `[train]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Seed of initialisation, data order and dropout (default 0).
    pub seed: u64,
    /// Optimizer steps; 0 = run `epochs` epochs (default 0).
    pub max_steps: usize,
    /// Passes over the training rows when `max_steps` is 0 (default 1).
    pub epochs: usize,
    /// Rows per forward pass (default 4).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: usize,
    /// Peak learning rate (default 2e-4).
    pub lr: f64,
    /// `constant`, `linear` (to 0) or `cosine` (to 0) after warm-up (default `constant`).
    pub schedule: Schedule,
    /// Linear warm-up steps from 0 to `lr` (default 0).
    pub warmup_steps: usize,
    /// AdamW weight decay (default 0, as the HF Trainer).
    pub weight_decay: f64,
    /// AdamW β1 (default 0.9).
    pub beta1: f64,
    /// AdamW β2 (default 0.999).
    pub beta2: f64,
    /// AdamW ε (default 1e-8, as PyTorch).
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 = no clipping (default 1.0).
    pub max_grad_norm: f64,
    /// Evaluate every N steps; 0 = only at the end (default 0).
    pub eval_every: usize,
    /// Write a checkpoint every N steps; 0 = only at the end (default 0).
    pub save_every: usize,
    /// Checkpoints kept besides the best one (default 2).
    pub keep_last: usize,
    /// Validation examples scored per evaluation (the first N), 0 = all (default 0).
    pub eval_records: usize,
    /// Prompts answered (greedy) at every evaluation, to watch the model change (default none).
    pub generate_prompts: Vec<String>,
    /// Tokens generated per prompt (default 32).
    pub generate_max_new_tokens: usize,
    /// Recompute each layer's MLP gate and up projections in the backward pass instead of
    /// keeping them from the forward pass (default false): less memory, a slower step, the
    /// same result.
    pub recompute_mlp: bool,
    /// `sft` (next-token loss on the trained tokens) or `dpo` (preference pairs; needs
    /// `data.format = "preference"`) (default `sft`).
    pub objective: Objective,
    /// DPO's β (default 0.1, as TRL).
    pub dpo_beta: f64,
    /// DPO's loss: `sigmoid` (the DPO paper) or `ipo` (default `sigmoid`).
    pub dpo_loss: DpoLoss,
}

/// What training minimises.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning: the mean next-token loss of the trained tokens.
    #[default]
    Sft,
    /// Direct preference optimisation on chosen/rejected pairs.
    Dpo,
}

impl TrainSection {
    /// DPO's settings, when the objective is DPO.
    pub fn dpo(&self) -> Option<DpoSettings> {
        (self.objective == Objective::Dpo).then_some(DpoSettings {
            beta: self.dpo_beta,
            loss: self.dpo_loss,
        })
    }

    /// What the training pass keeps of each layer's MLP.
    pub fn mlp_activations(&self) -> MlpActivations {
        match self.recompute_mlp {
            true => MlpActivations::Recompute,
            false => MlpActivations::Keep,
        }
    }
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stay at the peak.
    Constant,
    /// Fall linearly to 0 at the last step.
    Linear,
    /// Fall along a half cosine to 0 at the last step.
    Cosine,
}

/// `[output]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// The run directory (default `checkpoints/runs/run`).
    pub run_dir: PathBuf,
}

fn default_device() -> String {
    "flex".into()
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
            layers_to_transform: Vec::new(),
            use_rslora: false,
            use_dora: false,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            seed: 0,
            max_steps: 0,
            epochs: 1,
            micro_batch: 4,
            grad_accum: 1,
            lr: 2e-4,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            eval_every: 0,
            save_every: 0,
            keep_last: 2,
            eval_records: 0,
            generate_prompts: Vec::new(),
            generate_max_new_tokens: 32,
            recompute_mlp: false,
            objective: Objective::Sft,
            dpo_beta: 0.1,
            dpo_loss: DpoLoss::Sigmoid,
        }
    }
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("checkpoints/runs/run"),
        }
    }
}

impl RunConfig {
    /// Reads `path`, applies `--set section.key=value` overrides, and validates. Errors name the
    /// file and the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, overrides).map_err(|e| e.in_file(path))
    }

    /// Parses TOML text with overrides, then validates.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, Error> {
        let syntax = |e: toml::de::Error| Error::Parse(one_line(&e.to_string()));
        let mut table: toml::Table = text.parse().map_err(syntax)?;
        for item in overrides {
            apply_override(&mut table, item).map_err(Error::Usage)?;
        }
        let config: RunConfig = table.try_into().map_err(syntax)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), Error> {
        let (lora, train, data) = (&self.lora, &self.train, &self.data);
        let fail = |key: &str, why: String| Err(Error::config(key, why));
        if self.model.path.as_os_str().is_empty() {
            return fail(
                "model.path",
                "must name a model directory or a .gguf file".into(),
            );
        }
        data.validate()?;
        if lora.r == 0 {
            return fail("lora.r", "must be at least 1".into());
        }
        if !(lora.alpha > 0.0 && lora.alpha.is_finite()) {
            return fail(
                "lora.alpha",
                format!("must be positive, got {}", lora.alpha),
            );
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return fail(
                "lora.dropout",
                format!("must be in [0, 1), got {}", lora.dropout),
            );
        }
        if lora.target_modules.is_empty() {
            return fail("lora.target_modules", "names no module".into());
        }
        for target in &lora.target_modules {
            if target != "all-linear" && !TARGET_MODULES.contains(&target.as_str()) {
                return fail(
                    "lora.target_modules",
                    format!(
                        "unknown module `{target}` (known: all-linear, {})",
                        TARGET_MODULES.join(", ")
                    ),
                );
            }
        }
        let preference = data.format == Format::Preference;
        match (train.objective, preference) {
            (Objective::Dpo, false) => {
                return fail(
                    "train.objective",
                    "`dpo` trains on preference pairs; set data.format = \"preference\"".into(),
                );
            }
            (Objective::Sft, true) => {
                return fail(
                    "data.format",
                    "`preference` data needs train.objective = \"dpo\"".into(),
                );
            }
            _ => {}
        }
        if !(train.dpo_beta > 0.0 && train.dpo_beta.is_finite()) {
            return fail(
                "train.dpo_beta",
                format!("must be positive, got {}", train.dpo_beta),
            );
        }
        if !(train.lr > 0.0 && train.lr.is_finite()) {
            return fail("train.lr", format!("must be positive, got {}", train.lr));
        }
        if train.micro_batch == 0 {
            return fail("train.micro_batch", "must be at least 1".into());
        }
        if train.grad_accum == 0 {
            return fail("train.grad_accum", "must be at least 1".into());
        }
        if train.max_steps == 0 && train.epochs == 0 {
            return fail(
                "train.epochs",
                "must be at least 1 when train.max_steps is 0".into(),
            );
        }
        if train.weight_decay < 0.0 || train.max_grad_norm < 0.0 {
            return fail(
                "train.weight_decay / train.max_grad_norm",
                "must not be negative".into(),
            );
        }
        for (key, value) in [("train.beta1", train.beta1), ("train.beta2", train.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return fail(key, format!("must be in [0, 1), got {value}"));
            }
        }
        if train.eps <= 0.0 {
            return fail("train.eps", format!("must be positive, got {}", train.eps));
        }
        if train.keep_last == 0 {
            return fail("train.keep_last", "must be at least 1".into());
        }
        Ok(())
    }

    /// The adapter placement and shape this config asks for.
    pub fn lora_spec(&self) -> LoraSpec {
        let all = self.lora.target_modules.iter().any(|t| t == "all-linear");
        LoraSpec {
            rank: self.lora.r,
            alpha: self.lora.alpha,
            dropout: self.lora.dropout,
            target_modules: match all {
                true => TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
                false => self.lora.target_modules.clone(),
            },
            layers_to_transform: match self.lora.layers_to_transform.is_empty() {
                true => None,
                false => Some(self.lora.layers_to_transform.clone()),
            },
            use_rslora: self.lora.use_rslora,
            use_dora: self.lora.use_dora,
        }
    }

    /// A hash of everything that shapes the trained adapter (model, adapter, training data,
    /// optimisation); step counts, evaluation, checkpoint cadence and output paths may change
    /// between a run and its resumption and are left out.
    pub fn training_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut shaping = self.clone();
        shaping.data.valid = Files::default();
        shaping.data.cache_dir = String::new();
        shaping.train.max_steps = 0;
        shaping.train.epochs = 0;
        shaping.train.eval_every = 0;
        shaping.train.save_every = 0;
        shaping.train.keep_last = 0;
        shaping.train.eval_records = 0;
        shaping.train.generate_prompts = Vec::new();
        shaping.train.generate_max_new_tokens = 0;
        shaping.train.recompute_mlp = false; // the same adapters either way
        shaping.output = OutputSection::default();
        // Keys added since hash as before they existed, so older runs resume.
        let text = shaping
            .to_toml()
            .replace("base_quant = \"none\"\n", "")
            .replace("recompute_mlp = false\n", "")
            .replace("use_dora = false\n", "")
            .replace(
                "prompt = \"prompt\"\nchosen = \"chosen\"\nrejected = \"rejected\"\n",
                "",
            )
            .replace(
                "objective = \"sft\"\ndpo_beta = 0.1\ndpo_loss = \"sigmoid\"\n",
                "",
            );
        format!("{:x}", Sha256::digest(text.as_bytes()))
    }

    /// The configuration as TOML (what the run directory keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a run config serializes")
    }
}

/// Sets `section.key` in `table` to `value`, parsed as a TOML value (a bare word is a string).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), String> {
    let (key, value) = item
        .split_once('=')
        .ok_or_else(|| format!("--set `{item}`: expected section.key=value"))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| format!("--set `{item}`: the key must be section.key"))?;
    let value = value.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let section_table = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("--set `{item}`: `{section}` is not a section"))?;
    section_table.insert(field.to_string(), parsed);
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use feinschliff_model::kernels::bf16_matmul;

    const MINIMAL: &str = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_and_overrides() {
        let config = RunConfig::parse(
            MINIMAL,
            &["train.lr=1e-3".into(), "output.run_dir=runs/x".into()],
        )
        .unwrap();
        assert_eq!(config.train.lr, 1e-3);
        assert_eq!(config.output.run_dir, PathBuf::from("runs/x"));
        assert_eq!(config.lora.r, 16);
        assert_eq!(config.train.eps, 1e-8);
        assert_eq!(config.lora_spec().target_modules.len(), 7);
        let again = RunConfig::parse(&config.to_toml(), &[]).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_key() {
        let cases = [
            ("lora.r=0", "lora.r"),
            ("train.lr=-1e-4", "train.lr"),
            ("lora.target_modules=[\"qkv_proj\"]", "qkv_proj"),
            ("data.max_len=0", "data.max_len"),
            ("model.base_dtype=\"f16\"", "model.base_dtype"),
            ("model.matmul_dtype=\"fp8\"", "model.matmul_dtype"),
            ("train.learning_rate=1", "learning_rate"),
            ("lora", "section.key=value"),
        ];
        for (set, expected) in cases {
            let message = RunConfig::parse(MINIMAL, &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{set}: {message}");
            assert!(!message.contains('\n'));
        }
        let message = RunConfig::parse("[model]\npath = \"m\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("data"), "{message}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn a_quantized_base_changes_the_training_hash() {
        let dense = RunConfig::parse(MINIMAL, &[]).unwrap();
        let text = dense.to_toml();
        assert!(text.contains("base_quant = \"none\"\n"), "{text}");
        let mut quantized = dense.clone();
        quantized.model.base_quant = BaseQuant::Q8_0;
        assert_ne!(dense.training_hash(), quantized.training_hash());
    }

    /// Keys added later (DoRA, DPO, preference columns) at their defaults leave the hash of a
    /// run as it was, so runs of earlier versions resume: the hash of configs/tiny.toml that
    /// the binary of commit 56b03e1 wrote into its checkpoints.
    #[test]
    fn new_keys_at_their_defaults_keep_earlier_hashes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tiny.toml");
        let config = RunConfig::load(&path, &[]).unwrap();
        let earlier = "c482721d2ad37b7f3823ca9866a2ba08fa8380bcd7201c4a7031745f4017c6de";
        assert_eq!(config.training_hash(), earlier);
        let dora = RunConfig::load(&path, &["lora.use_dora=true".into()]).unwrap();
        assert_ne!(dora.training_hash(), earlier);
    }

    #[test]
    fn recomputing_the_mlp_keeps_the_training_hash() {
        let kept = RunConfig::parse(MINIMAL, &[]).unwrap();
        let recomputed = RunConfig::parse(MINIMAL, &["train.recompute_mlp=true".into()]).unwrap();
        assert!(recomputed.train.recompute_mlp);
        assert_eq!(kept.training_hash(), recomputed.training_hash());
    }

    #[test]
    fn base_dtypes_resolve_and_refuse_bf16_products_where_the_cpu_lacks_them() {
        let parse = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            RunConfig::parse(MINIMAL, &sets).unwrap().model
        };
        let flex = DeviceChoice::Flex;
        assert_eq!(
            parse(&[]).base_dtypes(flex, DType::F32).unwrap(),
            (DType::F32, DType::F32)
        );
        let bf16_base = parse(&["model.base_dtype=\"bf16\""]);
        assert_eq!(
            bf16_base.base_dtypes(flex, DType::F32).unwrap(),
            (DType::BF16, DType::F32)
        );
        let f32_products = parse(&["model.matmul_dtype=\"f32\""]);
        assert_eq!(
            f32_products.base_dtypes(flex, DType::BF16).unwrap(),
            (DType::F32, DType::F32)
        );
        let bf16_products = parse(&["model.matmul_dtype=\"bf16\""]).base_dtypes(flex, DType::F32);
        match bf16_matmul::available() {
            true => {
                assert_eq!(bf16_products.unwrap(), (DType::BF16, DType::BF16));
                assert_eq!(
                    parse(&[]).base_dtypes(flex, DType::BF16).unwrap(),
                    (DType::BF16, DType::BF16),
                    "an auto base follows the products"
                );
            }
            false => {
                let message = bf16_products.unwrap_err().to_string();
                assert!(message.contains("model.matmul_dtype"), "{message}");
                assert!(message.contains("AVX512-BF16"), "{message}");
                assert!(!message.contains('\n'));
            }
        }
    }
}
