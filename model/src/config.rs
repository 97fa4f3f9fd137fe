//! The architecture of a Llama-family model, read from a Hugging Face `config.json`: Llama,
//! Mistral, Qwen2/2.5 and Qwen3, each with the defaults of its transformers config class.
//!
//! Both forms of the RoPE settings are read: transformers v4 (top-level `rope_theta` and
//! `rope_scaling`) and v5 (`rope_parameters`). Size keys have no defaults: a config that lacks
//! one is an error naming the key, never a silent 7B default.

use std::path::Path;

use serde::Deserialize;

use crate::Error;
use crate::json::parse_json;

/// The model families we compute, each as its transformers class computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM`.
    Llama,
    /// `MistralForCausalLM`: sliding-window attention in every layer when `sliding_window` is set.
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen2 and Qwen2.5): biases on q/k/v, none on o.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMSNorm over each query and key head before RoPE.
    Qwen3,
}

impl Family {
    /// Every family, in the order the docs list them.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

    /// `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The transformers class, as `architectures` in `config.json` names it.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }
}

/// Which layers attend through the sliding window (when the config sets one).
#[derive(Debug, Clone, PartialEq)]
pub enum SlidingLayers {
    /// Every layer (Mistral).
    All,
    /// Layers from this index on (Qwen's `max_window_layers`).
    From(usize),
    /// As `layer_types` lists them (true = `sliding_attention`).
    Listed(Vec<bool>),
}

/// Everything the model code needs to know about the architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The family, which decides the class and `model_type` written on export.
    pub family: Family,
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Rotary position embedding settings.
    pub rope: RopeConfig,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// When true, the output head is the token embedding (no `lm_head.weight` in the files).
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the o projection.
    pub o_bias: bool,
    /// RMSNorm over each query and key head before RoPE (`q_norm`, `k_norm`; Qwen3).
    pub qk_norm: bool,
    /// Keys older than this many positions are out of a sliding layer's reach: query `i` sees
    /// keys `j` with `i − window < j ≤ i`.
    pub sliding_window: Option<usize>,
    /// Which layers slide (only read when `sliding_window` is set).
    pub sliding_layers: SlidingLayers,
    /// Bias on gate/up/down projections.
    pub mlp_bias: bool,
    /// BOS token id, if any.
    pub bos_token_id: Option<u32>,
    /// EOS token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
}

/// Rotary position embedding: base frequency and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// `rope_theta`, the base of the inverse frequencies.
    pub theta: f64,
    /// How the inverse frequencies are rescaled.
    pub scaling: RopeScaling,
}

/// The RoPE scaling types we implement.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling (`rope_type: default`).
    Default,
    /// Llama 3.1's frequency-dependent scaling (`rope_type: llama3`).
    Llama3(Llama3Rope),
}

/// The parameters of `rope_type: llama3`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    /// `factor`: how much the low frequencies are slowed down.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: f64,
}

/// `config.json` as written, before validation. Unknown keys are allowed: HF configs carry many
/// that do not concern the architecture.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    /// Absent and `null` differ: Mistral defaults an absent window to 4096.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

/// `Some(value)` for a key that is present, `null` included (`Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `rope_scaling` (v4) or `rope_parameters` (v5).
#[derive(Debug, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// A token id given as one integer or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// The projections of a decoder layer, as paths below `model.layers.{i}`.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The norms of a decoder layer, as paths below `model.layers.{i}`.
const LAYER_NORMS: [&str; 2] = ["input_layernorm", "post_attention_layernorm"];

/// The per-head norms of a Qwen3 layer, as paths below `model.layers.{i}`.
const HEAD_NORMS: [&str; 2] = ["self_attn.q_norm", "self_attn.k_norm"];

/// The window Mistral's config class assumes when `sliding_window` is absent.
const MISTRAL_DEFAULT_WINDOW: usize = 4096;
/// Qwen's default `max_window_layers`.
const QWEN_DEFAULT_MAX_WINDOW_LAYERS: usize = 28;
/// Qwen3's default `head_dim`.
const QWEN3_DEFAULT_HEAD_DIM: usize = 128;

const DEFAULT_ROPE_THETA: f64 = 10_000.0;
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// `max_position_embeddings` when absent, as each config class defaults it.
const DEFAULT_MAX_POSITIONS: usize = 2048;
const MISTRAL_MAX_POSITIONS: usize = 4096 * 32;
const QWEN_MAX_POSITIONS: usize = 32768;

impl LlamaConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|message| Error::invalid(path, message))
    }

    /// Parses and validates the text of a `config.json`; the error names the key.
    pub(crate) fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig = parse_json(text)?;
        raw.validate()
    }

    /// Output width of the query projection, `num_attention_heads · head_dim` (which cannot
    /// overflow in a config that was read and validated).
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Output width of the key and value projections, `num_key_value_heads · head_dim`.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// `[out, in]` of projection `module` of a decoder layer (one of [`PROJECTIONS`]) and
    /// whether it has a bias; `None` for another name.
    pub fn projection(&self, module: &str) -> Option<([usize; 2], bool)> {
        let (hidden, ffn) = (self.hidden_size, self.intermediate_size);
        let (qkv, mlp) = (self.qkv_bias, self.mlp_bias);
        Some(match module {
            "self_attn.q_proj" => ([self.q_width(), hidden], qkv),
            "self_attn.k_proj" | "self_attn.v_proj" => ([self.kv_width(), hidden], qkv),
            "self_attn.o_proj" => ([hidden, self.q_width()], self.o_bias),
            "mlp.gate_proj" | "mlp.up_proj" => ([ffn, hidden], mlp),
            "mlp.down_proj" => ([hidden, ffn], mlp),
            _ => return None,
        })
    }

    /// The sliding window of decoder layer `layer`, `None` where it attends to every earlier key.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let slides = match &self.sliding_layers {
            SlidingLayers::All => true,
            SlidingLayers::From(first) => layer >= *first,
            SlidingLayers::Listed(listed) => listed.get(layer).copied().unwrap_or(false),
        };
        self.sliding_window.filter(|_| slides)
    }

    /// The per-head norms of a layer (`self_attn.q_norm`, `self_attn.k_norm`), if it has them.
    fn head_norms(&self) -> &'static [&'static str] {
        match self.qk_norm {
            true => &HEAD_NORMS,
            false => &[],
        }
    }

    /// The names transformers gives the tensors of decoder layer `layer`.
    pub fn layer_tensor_names(&self, layer: usize) -> Vec<String> {
        let norms = LAYER_NORMS
            .iter()
            .chain(self.head_norms())
            .map(|n| format!("{n}.weight"));
        let projections = PROJECTIONS.iter().flat_map(|module| {
            let bias = self.projection(module).is_some_and(|(_, bias)| bias);
            let params: &[&str] = if bias {
                &["weight", "bias"]
            } else {
                &["weight"]
            };
            params.iter().map(move |p| format!("{module}.{p}"))
        });
        norms
            .chain(projections)
            .map(|name| format!("model.layers.{layer}.{name}"))
            .collect()
    }

    /// The shape of checkpoint tensor `name` (as transformers names it) in a model of this
    /// architecture, or `None` where the model has no such tensor (a layer past the last, a
    /// bias the config does not ask for, a name that is no Llama tensor).
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => {
                return Some(vec![self.vocab_size, self.hidden_size]);
            }
            "model.norm.weight" => return Some(vec![self.hidden_size]),
            _ => {}
        }
        let (layer, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
        let index: usize = layer.parse().ok()?;
        if index >= self.num_hidden_layers || index.to_string() != layer {
            return None;
        }
        let (module, param) = rest.rsplit_once('.')?;
        if LAYER_NORMS.contains(&module) && param == "weight" {
            return Some(vec![self.hidden_size]);
        }
        if self.head_norms().contains(&module) && param == "weight" {
            return Some(vec![self.head_dim]);
        }
        let ([out, input], bias) = self.projection(module)?;
        match param {
            "weight" => Some(vec![out, input]),
            "bias" if bias => Some(vec![out]),
            _ => None,
        }
    }
}

/// Checks that the model's sizes fit in memory arithmetic: the parameter count (bounded from
/// above) in f32 bytes must fit in `isize`, so that no product of sizes taken from the config
/// wraps in a release build. The error names the key whose size overflows.
fn check_sizes(c: &LlamaConfig) -> Result<(), String> {
    const LIMIT: usize = isize::MAX as usize / 4;
    let fits = |size: Option<usize>, key: &str| {
        size.filter(|&s| s <= LIMIT).ok_or_else(|| {
            format!("key `{key}`: the model's sizes overflow (more than {LIMIT} parameters)")
        })
    };
    let q = fits(c.num_attention_heads.checked_mul(c.head_dim), "head_dim")?;
    let kv = fits(c.num_key_value_heads.checked_mul(c.head_dim), "head_dim")?;
    // The output widths of a layer's projections and norms (q, kv <= LIMIT: no overflow)
    // times one more than the input width (for the biases) bound a layer's parameters.
    let widths = c.intermediate_size.checked_mul(3);
    let widths = widths.and_then(|w| w.checked_add(2 * q + 2 * kv + 4));
    let widths = fits(widths, "intermediate_size")?;
    let layer = c
        .hidden_size
        .checked_add(1)
        .and_then(|h| h.checked_mul(widths));
    let layer = fits(layer, "hidden_size")?;
    let embeddings = c.vocab_size.checked_mul(c.hidden_size);
    let embeddings = fits(embeddings.and_then(|e| e.checked_mul(2)), "vocab_size")?;
    let total = c.num_hidden_layers.checked_mul(layer);
    fits(
        total.and_then(|t| t.checked_add(embeddings)),
        "num_hidden_layers",
    )?;
    Ok(())
}

impl RawConfig {
    fn validate(self) -> Result<LlamaConfig, String> {
        let family = self.family()?;
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(format!(
                "key `hidden_act`: `{act}` is not supported (only `silu`)"
            ));
        }
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_attention_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = match self.num_key_value_heads {
            None => num_attention_heads,
            Some(n) => required(Some(n), "num_key_value_heads")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "key `num_key_value_heads`: {num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"
            ));
        }
        let head_dim = self.head_dim(family, hidden_size, num_attention_heads)?;
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS);
        if rms_norm_eps.is_nan() || rms_norm_eps < 0.0 {
            return Err(format!("key `rms_norm_eps`: {rms_norm_eps} must be >= 0"));
        }
        let num_hidden_layers = required(self.num_hidden_layers, "num_hidden_layers")?;
        let (sliding_window, sliding_layers) = self.sliding(family, num_hidden_layers)?;
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias, mlp_bias) = match family {
            Family::Llama => (
                attention_bias,
                attention_bias,
                self.mlp_bias.unwrap_or(false),
            ),
            Family::Mistral => (false, false, false),
            Family::Qwen2 => (true, false, false),
            Family::Qwen3 => (attention_bias, attention_bias, false),
        };
        let config = LlamaConfig {
            family,
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope: rope_config(self.rope_theta, self.rope_scaling, self.rope_parameters)?,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(match family {
                Family::Llama => DEFAULT_MAX_POSITIONS,
                Family::Mistral => MISTRAL_MAX_POSITIONS,
                Family::Qwen2 | Family::Qwen3 => QWEN_MAX_POSITIONS,
            }),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: family == Family::Qwen3,
            sliding_window,
            sliding_layers,
            mlp_bias,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self
                .eos_token_id
                .map(TokenIds::into_vec)
                .unwrap_or_default(),
        };
        check_sizes(&config)?;
        Ok(config)
    }

    /// The family named by `model_type`, which `architectures` (when given) must agree with.
    fn family(&self) -> Result<Family, String> {
        let supported = || {
            let types = Family::ALL.map(Family::model_type);
            format!("supported: {}", types.join(", "))
        };
        let family = match self.model_type.as_deref() {
            Some(name) => Family::from_model_type(name).ok_or_else(|| {
                format!(
                    "key `model_type`: `{name}` is not supported ({})",
                    supported()
                )
            })?,
            None => return Err("missing key `model_type`".into()),
        };
        if let Some(archs) = &self.architectures
            && !archs.iter().any(|a| a == family.architecture())
        {
            return Err(format!(
                "key `architectures`: {archs:?} is not supported for model_type `{}` (only `{}`)",
                family.model_type(),
                family.architecture()
            ));
        }
        Ok(family)
    }

    /// `head_dim`, or the family's default when absent (Qwen3: 128; others: hidden / heads).
    fn head_dim(&self, family: Family, hidden: usize, heads: usize) -> Result<usize, String> {
        let head_dim = match (self.head_dim, family) {
            (Some(d), _) => required(Some(d), "head_dim")?,
            (None, Family::Qwen3) => QWEN3_DEFAULT_HEAD_DIM,
            (None, _) if hidden.is_multiple_of(heads) => hidden / heads,
            (None, _) => {
                return Err(format!(
                    "missing key `head_dim`: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!("key `head_dim`: {head_dim} must be even for RoPE"));
        }
        Ok(head_dim)
    }

    /// The sliding window and its layers, as the family's config class derives them.
    fn sliding(
        &self,
        family: Family,
        layers: usize,
    ) -> Result<(Option<usize>, SlidingLayers), String> {
        let window = match (family, self.sliding_window) {
            (Family::Llama, _) => None,
            (Family::Mistral, None) => Some(MISTRAL_DEFAULT_WINDOW),
            (Family::Mistral, Some(window)) => window,
            (Family::Qwen2 | Family::Qwen3, window) => match self.use_sliding_window {
                Some(true) => window.unwrap_or(Some(MISTRAL_DEFAULT_WINDOW)),
                _ => None,
            },
        };
        if window == Some(0) {
            return Err("key `sliding_window` must be positive".into());
        }
        let listed = match (family, &self.layer_types) {
            (Family::Qwen2 | Family::Qwen3, Some(types)) => Some(types),
            _ => None,
        };
        let layers = match listed {
            None if family == Family::Mistral => SlidingLayers::All,
            None => SlidingLayers::From(
                self.max_window_layers
                    .unwrap_or(QWEN_DEFAULT_MAX_WINDOW_LAYERS),
            ),
            Some(types) => SlidingLayers::Listed(layer_types(types, layers)?),
        };
        Ok((window, layers))
    }
}

/// A positive size from key `key`.
fn required(value: Option<usize>, key: &str) -> Result<usize, String> {
    match value {
        Some(0) => Err(format!("key `{key}` must be positive")),
        Some(v) => Ok(v),
        None => Err(format!("missing key `{key}`")),
    }
}

/// `layer_types` as sliding flags; one entry per layer, each a type transformers knows.
fn layer_types(types: &[String], layers: usize) -> Result<Vec<bool>, String> {
    if types.len() != layers {
        return Err(format!(
            "key `layer_types`: {} entries for {layers} layers",
            types.len()
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(false),
            "sliding_attention" => Ok(true),
            other => Err(format!(
                "key `layer_types`: `{other}` is not supported (full_attention, sliding_attention)"
            )),
        })
        .collect()
}

/// Reads the v4 keys (`rope_theta`, `rope_scaling`) and the v5 key (`rope_parameters`); a
/// config may carry both forms (our exports do) as long as they agree.
fn rope_config(
    theta: Option<f64>,
    scaling: Option<RawRope>,
    parameters: Option<RawRope>,
) -> Result<RopeConfig, String> {
    match (scaling, parameters) {
        (Some(v4), Some(v5)) => {
            let (a, b) = (
                rope_form(theta, Some(v4), "rope_scaling")?,
                rope_form(theta, Some(v5), "rope_parameters")?,
            );
            match a == b {
                true => Ok(a),
                false => Err(format!(
                    "keys `rope_scaling` ({a:?}) and `rope_parameters` ({b:?}) disagree"
                )),
            }
        }
        (v4, None) => rope_form(theta, v4, "rope_scaling"),
        (None, v5) => rope_form(theta, v5, "rope_parameters"),
    }
}

/// One RoPE form: the top-level `rope_theta` with `rope_scaling` or `rope_parameters` (`key`).
fn rope_form(theta: Option<f64>, raw: Option<RawRope>, key: &str) -> Result<RopeConfig, String> {
    let theta = match (theta, raw.as_ref().and_then(|r| r.rope_theta)) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "key `rope_theta` ({a}) disagrees with `{key}.rope_theta` ({b})"
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => DEFAULT_ROPE_THETA,
    };
    if theta.is_nan() || theta <= 0.0 {
        return Err(format!("key `rope_theta`: {theta} must be positive"));
    }
    let Some(raw) = raw else {
        return Ok(RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        });
    };
    let rope_type = raw
        .rope_type
        .as_deref()
        .or(raw.legacy_type.as_deref())
        .unwrap_or("default");
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "llama3" => {
            let field = |value: Option<f64>, name: &str| {
                value.filter(|v| *v > 0.0).ok_or_else(|| {
                    format!("key `{key}.{name}`: missing or not positive (llama3 RoPE)")
                })
            };
            let low_freq_factor = field(raw.low_freq_factor, "low_freq_factor")?;
            let high_freq_factor = field(raw.high_freq_factor, "high_freq_factor")?;
            if high_freq_factor <= low_freq_factor {
                return Err(format!(
                    "key `{key}.high_freq_factor` must exceed low_freq_factor"
                ));
            }
            RopeScaling::Llama3(Llama3Rope {
                factor: field(raw.factor, "factor")?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: field(
                    raw.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            })
        }
        other => {
            return Err(format!(
                "key `{key}.rope_type`: `{other}` is not supported (supported: default, llama3)"
            ));
        }
    };
    Ok(RopeConfig { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""model_type": "llama", "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2"#;

    fn parse(extra: &str) -> Result<LlamaConfig, String> {
        LlamaConfig::from_json(&format!("{{{BASE}{extra}}}"))
    }

    /// The base config with `key` set to `value`.
    fn with(key: &str, value: u64) -> Result<LlamaConfig, String> {
        let mut json: serde_json::Value = serde_json::from_str(&format!("{{{BASE}}}")).unwrap();
        json[key] = value.into();
        LlamaConfig::from_json(&json.to_string())
    }

    #[test]
    fn defaults_follow_transformers() {
        let config = parse("").unwrap();
        assert_eq!(config.num_key_value_heads, 2);
        assert_eq!(config.head_dim, 4);
        assert_eq!(
            config.rope,
            RopeConfig {
                theta: 10_000.0,
                scaling: RopeScaling::Default
            }
        );
        assert!(!config.tie_word_embeddings);
        assert!(config.eos_token_ids.is_empty());
    }

    #[test]
    fn both_rope_forms_and_eos_lists() {
        let v4 = parse(
            r#", "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8,
            "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192},
            "eos_token_id": [1, 2]"#,
        )
        .unwrap();
        let v5 = parse(
            r#", "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8,
            "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192},
            "eos_token_id": 2"#,
        )
        .unwrap();
        assert_eq!(v4.rope, v5.rope);
        assert_eq!(v4.rope.theta, 5e5);
        assert_eq!(v4.eos_token_ids, [1, 2]);
        assert_eq!(v5.eos_token_ids, [2]);
    }

    #[test]
    fn sizes_that_overflow_name_their_key() {
        let huge = u64::MAX / 2;
        let cases = [
            ("num_hidden_layers", 100_000_000_000_000_000),
            // 2 heads of 4 + 2^63 wrap to 8 in 64-bit arithmetic.
            ("head_dim", 4 + (1 << 63)),
            ("intermediate_size", huge),
            ("vocab_size", huge),
        ];
        for (key, value) in cases {
            let message = with(key, value).unwrap_err();
            assert!(
                message.starts_with(&format!("key `{key}`: the model's sizes overflow")),
                "{key} = {value} -> {message}"
            );
        }
        let large = with("num_hidden_layers", 1_000_000).unwrap();
        assert_eq!(large.num_hidden_layers, 1_000_000);
    }

    #[test]
    fn tensor_shapes_follow_the_architecture() {
        let config = parse(r#", "num_key_value_heads": 1, "attention_bias": true"#).unwrap();
        let shape = |name: &str| config.tensor_shape(name);
        assert_eq!(shape("model.embed_tokens.weight"), Some(vec![10, 8]));
        assert_eq!(
            shape("model.layers.0.self_attn.k_proj.weight"),
            Some(vec![4, 8])
        );
        assert_eq!(shape("model.layers.0.self_attn.o_proj.bias"), Some(vec![8]));
        assert_eq!(
            shape("model.layers.0.mlp.down_proj.weight"),
            Some(vec![8, 16])
        );
        assert_eq!(
            shape("model.layers.0.input_layernorm.weight"),
            Some(vec![8])
        );
        for none in [
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.00.self_attn.q_proj.weight",
            "model.layers.0.mlp.up_proj.bias",
            "model.layers.0.self_attn.qkv_proj.weight",
        ] {
            assert_eq!(shape(none), None, "{none}");
        }
        let names = config.layer_tensor_names(0);
        assert_eq!(names.len(), 2 + 7 + 4);
        assert!(names.iter().all(|n| shape(n).is_some()), "{names:?}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                r#"{"model_type": "llama"}"#.to_string(),
                "missing key `hidden_size`",
            ),
            (
                format!(
                    "{{{}}}",
                    BASE.replace("\"hidden_size\": 8", "\"hidden_size\": \"x\"")
                ),
                "key `hidden_size`",
            ),
            (
                format!("{{{BASE}, \"num_key_value_heads\": 3}}"),
                "key `num_key_value_heads`",
            ),
            (
                format!("{{{BASE}, \"rope_scaling\": {{\"rope_type\": \"yarn\"}}}}"),
                "key `rope_scaling.rope_type`: `yarn`",
            ),
            (
                BASE.replace("llama", "gpt2")
                    .replace(r#""model"#, r#"{"model"#)
                    + "}",
                "key `model_type`: `gpt2`",
            ),
            (
                format!("{{{BASE}, \"architectures\": [\"MistralForCausalLM\"]}}"),
                "key `architectures`",
            ),
            ("{\"model_type\": ".to_string(), "invalid JSON"),
        ];
        for (json, expected) in cases {
            let message = LlamaConfig::from_json(&json).unwrap_err();
            assert!(message.contains(expected), "{json} -> {message}");
        }
    }
}
