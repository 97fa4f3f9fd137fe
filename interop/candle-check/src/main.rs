//! candle-check: proves that a feinschliff merged export loads in candle.
//!
//! ```text
//! candle-check --model DIR [--ids 5,17,42,8,...] --expected FILE.safetensors [--tolerance 1e-4]
//!              [--lenient-config]
//! ```
//!
//! Loads the Hugging Face model directory DIR (`config.json` plus `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`) with candle-transformers' Llama in F32 on the CPU,
//! runs the token ids as one sequence from position 0, and compares the logits of every position
//! with the tensor `logits` (f32, `[seq, vocab]` or `[1, seq, vocab]`) of FILE. When FILE also
//! holds `input_ids`, those are the ids (and `--ids`, if given, must equal them).
//!
//! candle's `Llama::forward` returns the logits of the last position only, so every position is
//! computed twice: as the last position of its prefix (a fresh cache without KV reuse for each
//! prefix, the full causal-mask path), and by incremental decoding, one token at a time with a KV
//! cache. The reported maximum is over both.
//!
//! The config is read with candle's own `LlamaConfig` and checked against our reading of
//! `config.json` (which also understands the v5 `rope_parameters` form, `head_dim`, biases and
//! the activation); any disagreement, or a model candle's Llama cannot represent, is an error.
//! `--lenient-config` uses our reading instead when candle's disagrees (never when the model is
//! unrepresentable). Weight files must hold exactly the tensors candle's Llama reads: candle
//! silently ignores extra ones.
//!
//! Prints `candle-check: max |Δlogit| = X over N positions (tolerance T): ok` and exits 0;
//! exits 1 (same line, `FAILED` and the worst position) when the logits differ by more than the
//! tolerance; exits 2 on any other error. Details go to stderr.

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{
    Cache, Config, Llama, Llama3RopeConfig, Llama3RopeType, LlamaConfig,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: candle-check --model DIR [--ids 5,17,42,...] --expected FILE.safetensors \
[--tolerance 1e-4] [--lenient-config]";

struct Args {
    model: PathBuf,
    ids: Option<Vec<u32>>,
    expected: PathBuf,
    tolerance: f64,
    lenient_config: bool,
}

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut ids = None;
    let mut expected = None;
    let mut tolerance = 1e-4;
    let mut lenient_config = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().ok_or_else(|| anyhow!("{name} needs a value")),
            }
        };
        match key.as_str() {
            "--model" => model = Some(PathBuf::from(value("--model")?)),
            "--expected" => expected = Some(PathBuf::from(value("--expected")?)),
            "--ids" => {
                let text = value("--ids")?;
                let parsed = text
                    .split(',')
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u32>().with_context(|| format!("--ids: `{s}`")))
                    .collect::<Result<Vec<_>>>()?;
                ids = Some(parsed);
            }
            "--tolerance" => {
                let text = value("--tolerance")?;
                tolerance = text
                    .parse::<f64>()
                    .with_context(|| format!("--tolerance: `{text}`"))?;
                ensure!(
                    tolerance.is_finite() && tolerance >= 0.0,
                    "--tolerance must be a finite number >= 0"
                );
            }
            "--lenient-config" => lenient_config = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(Args {
        model: model.ok_or_else(|| anyhow!("--model is required\n{USAGE}"))?,
        ids,
        expected: expected.ok_or_else(|| anyhow!("--expected is required\n{USAGE}"))?,
        tolerance,
        lenient_config,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("candle-check: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether the logits agree within the tolerance.
fn run() -> Result<bool> {
    let args = parse_args()?;
    let config = read_config(&args.model, args.lenient_config)?;
    let (files, weight_dtype) = weight_files(&args.model, config.tie_word_embeddings, &config)?;
    eprintln!(
        "candle-check: weights {} ({weight_dtype}), computing in f32 on the CPU",
        files
            .iter()
            .map(|f| f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let expected = Expected::read(&args.expected)?;
    let ids = match (args.ids, expected.input_ids.clone()) {
        (Some(given), Some(stored)) => {
            ensure!(
                given == stored,
                "--ids {given:?} differ from `input_ids` {stored:?} in {}",
                args.expected.display()
            );
            given
        }
        (Some(given), None) => given,
        (None, Some(stored)) => stored,
        (None, None) => bail!(
            "no --ids given and {} holds no `input_ids`",
            args.expected.display()
        ),
    };
    ensure!(!ids.is_empty(), "no token ids");
    ensure!(
        ids.len() <= config.max_position_embeddings,
        "{} ids exceed max_position_embeddings {}",
        ids.len(),
        config.max_position_embeddings
    );
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        bail!(
            "token id {bad} is outside the vocabulary ({})",
            config.vocab_size
        );
    }
    ensure!(
        expected.seq == ids.len() && expected.vocab == config.vocab_size,
        "`logits` in {} is [{}, {}], expected [{}, {}] (ids x vocab_size)",
        args.expected.display(),
        expected.seq,
        expected.vocab,
        ids.len(),
        config.vocab_size
    );

    let device = Device::Cpu;
    // SAFETY: the weight files are memory-mapped read-only and not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &device)? };
    // `Llama::load` unwraps the per-layer load results, so a shape mismatch panics there.
    let model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Llama::load(vb, &config)))
        .map_err(|_| anyhow!("candle's Llama::load panicked (see the message above)"))?
        .context("candle's Llama::load")?;

    let prefix = prefix_logits(&model, &config, &ids, &device)?;
    let incremental = incremental_logits(&model, &config, &ids, &device)?;
    let prefix_cmp = compare(&prefix, &expected);
    let incremental_cmp = compare(&incremental, &expected);
    eprintln!(
        "candle-check: full forward of each prefix: max |Δlogit| = {:.3e}; \
         incremental with KV cache: max |Δlogit| = {:.3e}",
        prefix_cmp.max, incremental_cmp.max
    );

    let worst = if incremental_cmp.max > prefix_cmp.max || incremental_cmp.max.is_nan() {
        (&incremental_cmp, "incremental")
    } else {
        (&prefix_cmp, "prefix")
    };
    let (cmp, mode) = worst;
    let over: BTreeSet<usize> = prefix_cmp
        .over(args.tolerance)
        .into_iter()
        .chain(incremental_cmp.over(args.tolerance))
        .collect();
    let head = format!(
        "candle-check: max |Δlogit| = {:.3e} over {} positions (tolerance {:e})",
        cmp.max,
        ids.len(),
        args.tolerance
    );
    if over.is_empty() && !cmp.max.is_nan() {
        println!("{head}: ok");
        Ok(true)
    } else {
        let (pos, tok) = cmp.argmax;
        println!(
            "{head}: FAILED ({} of {} positions over tolerance; worst at position {pos}, \
             vocab index {tok} ({mode}): candle {}, expected {})",
            over.len(),
            ids.len(),
            cmp.candle_at_max,
            cmp.expected_at_max
        );
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------
// Logits

/// Each position as the last one of its prefix, with a fresh cache without KV reuse per prefix.
fn prefix_logits(
    model: &Llama,
    config: &Config,
    ids: &[u32],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    (1..=ids.len())
        .map(|t| {
            let mut cache = Cache::new(false, DType::F32, config, device)?;
            let input = Tensor::new(&ids[..t], device)?.unsqueeze(0)?;
            last_logits(model.forward(&input, 0, &mut cache)?, config)
        })
        .collect()
}

/// Each position by incremental decoding: one token at a time at index `t`, with a KV cache.
fn incremental_logits(
    model: &Llama,
    config: &Config,
    ids: &[u32],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut cache = Cache::new(true, DType::F32, config, device)?;
    ids.iter()
        .enumerate()
        .map(|(t, &id)| {
            let input = Tensor::new(&[id], device)?.unsqueeze(0)?;
            last_logits(model.forward(&input, t, &mut cache)?, config)
        })
        .collect()
}

/// `[1, vocab]` (what candle's forward returns: the last position only) to a vector.
fn last_logits(logits: Tensor, config: &Config) -> Result<Vec<f32>> {
    ensure!(
        logits.dims() == [1, config.vocab_size],
        "candle returned logits of shape {:?}, expected [1, {}]",
        logits.dims(),
        config.vocab_size
    );
    Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

struct Comparison {
    /// Largest |Δ| of every position.
    per_position: Vec<f64>,
    max: f64,
    argmax: (usize, usize),
    candle_at_max: f32,
    expected_at_max: f32,
}

impl Comparison {
    fn over(&self, tolerance: f64) -> Vec<usize> {
        self.per_position
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > tolerance) // never NaN: see `compare`
            .map(|(p, _)| p)
            .collect()
    }
}

fn compare(candle: &[Vec<f32>], expected: &Expected) -> Comparison {
    let mut cmp = Comparison {
        per_position: Vec::with_capacity(candle.len()),
        max: -1.0, // below any |Δ|, so the first one is recorded
        argmax: (0, 0),
        candle_at_max: f32::NAN,
        expected_at_max: f32::NAN,
    };
    for (p, row) in candle.iter().enumerate() {
        let want = &expected.logits[p * expected.vocab..(p + 1) * expected.vocab];
        let mut row_max = 0.0f64;
        for (v, (&got, &exp)) in row.iter().zip(want).enumerate() {
            let d = (got as f64 - exp as f64).abs();
            // A NaN on either side counts as an infinite difference.
            let d = if d.is_nan() { f64::INFINITY } else { d };
            row_max = row_max.max(d);
            if d > cmp.max {
                cmp.max = d;
                cmp.argmax = (p, v);
                cmp.candle_at_max = got;
                cmp.expected_at_max = exp;
            }
        }
        cmp.per_position.push(row_max);
    }
    cmp
}

// ---------------------------------------------------------------------------------------------
// Expected logits

struct Expected {
    seq: usize,
    vocab: usize,
    logits: Vec<f32>,
    input_ids: Option<Vec<u32>>,
}

impl Expected {
    fn read(path: &Path) -> Result<Self> {
        use safetensors::{Dtype, SafeTensors};
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let logits = st
            .tensor("logits")
            .with_context(|| format!("{} holds no tensor `logits`", path.display()))?;
        ensure!(
            logits.dtype() == Dtype::F32,
            "`logits` in {} is {:?}, expected F32",
            path.display(),
            logits.dtype()
        );
        let (seq, vocab) = match *logits.shape() {
            [s, v] | [1, s, v] => (s, v),
            ref other => bail!(
                "`logits` in {} has shape {other:?}, expected [seq, vocab]",
                path.display()
            ),
        };
        let values = logits
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let input_ids = match st.tensor("input_ids") {
            Err(_) => None,
            Ok(t) => {
                let n = match *t.shape() {
                    [n] | [1, n] => n,
                    ref other => bail!("`input_ids` has shape {other:?}, expected [seq]"),
                };
                let data = t.data();
                let ids: Vec<i64> = match t.dtype() {
                    Dtype::I64 => data
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect(),
                    Dtype::I32 => data
                        .chunks_exact(4)
                        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                        .collect(),
                    Dtype::U32 => data
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                        .collect(),
                    other => bail!("`input_ids` is {other:?}, expected I64, I32 or U32"),
                };
                ensure!(ids.len() == n, "`input_ids` data does not match its shape");
                Some(
                    ids.into_iter()
                        .map(|id| u32::try_from(id).map_err(|_| anyhow!("input id {id}")))
                        .collect::<Result<Vec<_>>>()?,
                )
            }
        };
        Ok(Self {
            seq,
            vocab,
            logits: values,
            input_ids,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Weights

/// The safetensors files of the model, after checking they hold exactly the tensors candle's
/// Llama reads (candle would silently ignore extra ones, and panic on missing layer tensors).
/// Also returns the stored dtype(s).
fn weight_files(dir: &Path, tied: bool, config: &Config) -> Result<(Vec<PathBuf>, String)> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?,
        )
        .with_context(|| format!("parsing {}", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("{} has no `weight_map` object", index.display()))?;
        let names: BTreeSet<&str> = map
            .values()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| anyhow!("non-string file in weight_map"))
            })
            .collect::<Result<_>>()?;
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };

    let mut present = BTreeSet::new();
    let mut dtypes = BTreeSet::new();
    for file in &files {
        for (name, dtype) in safetensors_header(file)? {
            dtypes.insert(dtype);
            ensure!(
                present.insert(name.clone()),
                "tensor `{name}` is stored twice"
            );
        }
    }
    let mut wanted: BTreeSet<String> = ["model.embed_tokens.weight", "model.norm.weight"]
        .into_iter()
        .map(String::from)
        .collect();
    if !tied {
        wanted.insert("lm_head.weight".into());
    }
    for i in 0..config.num_hidden_layers {
        for part in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            wanted.insert(format!("model.layers.{i}.{part}.weight"));
        }
    }
    let missing: Vec<_> = wanted.difference(&present).collect();
    let extra: Vec<_> = present.difference(&wanted).collect();
    ensure!(missing.is_empty(), "weights lack tensors {missing:?}");
    ensure!(
        extra.is_empty(),
        "weights hold tensors candle's Llama would silently ignore: {extra:?}{}",
        if tied && extra.iter().any(|n| n.as_str() == "lm_head.weight") {
            " (lm_head.weight with tie_word_embeddings = true)"
        } else {
            ""
        }
    );
    let dtypes = dtypes.into_iter().collect::<Vec<_>>().join("+");
    Ok((files, dtypes))
}

/// Tensor names and dtypes from a safetensors header, without reading the data.
fn safetensors_header(path: &Path) -> Result<Vec<(String, String)>> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("reading {}", path.display()))?;
    let len = u64::from_le_bytes(len);
    ensure!(
        len < 100 << 20,
        "{}: implausible header size",
        path.display()
    );
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .with_context(|| format!("reading {}", path.display()))?;
    let json: Map<String, Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    Ok(json
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let dtype = v
                .get("dtype")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            (k, dtype)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Config

/// RoPE as config.json describes it (v4 `rope_theta`/`rope_scaling` or v5 `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
enum Rope {
    Default {
        theta: f64,
    },
    Llama3 {
        theta: f64,
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: u64,
    },
}

/// Reads config.json with candle's `LlamaConfig`, checks it against our own reading, and returns
/// the `Config` to load the model with.
fn read_config(dir: &Path, lenient: bool) -> Result<Config> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let json = json
        .as_object()
        .ok_or_else(|| anyhow!("{} is not a JSON object", path.display()))?;

    // Hard errors: models candle's Llama cannot represent at all.
    let ours = own_config(json).with_context(|| format!("{}", path.display()))?;

    let candle = serde_json::from_str::<LlamaConfig>(&text).map(|c| c.into_config(false));
    let problems = match &candle {
        Err(e) => vec![format!("candle's LlamaConfig rejects it: {e}")],
        Ok(candle) => config_differences(candle, &ours),
    };
    if problems.is_empty() {
        eprintln!("candle-check: config.json read by candle's LlamaConfig, agrees with ours");
        return Ok(candle.expect("no problems means it parsed"));
    }
    let list = problems.join("; ");
    if lenient {
        eprintln!(
            "candle-check: warning: {}: {list}; using our own reading (--lenient-config)",
            path.display()
        );
        Ok(ours)
    } else {
        bail!(
            "{}: {list} (--lenient-config uses our own reading instead)",
            path.display()
        )
    }
}

/// Our reading of config.json as candle's `Config`, after refusing what candle's Llama cannot
/// represent.
fn own_config(json: &Map<String, Value>) -> Result<Config> {
    let usize_key = |key: &str| -> Result<Option<usize>> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| anyhow!("key `{key}`: {v} is not an unsigned integer")),
        }
    };
    let required = |key: &str| -> Result<usize> {
        usize_key(key)?.ok_or_else(|| anyhow!("key `{key}` is missing"))
    };
    let hidden_size = required("hidden_size")?;
    let num_attention_heads = required("num_attention_heads")?;
    let num_key_value_heads = usize_key("num_key_value_heads")?.unwrap_or(num_attention_heads);
    ensure!(
        num_attention_heads > 0 && hidden_size % num_attention_heads == 0,
        "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
    );
    ensure!(
        num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
        "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads \
         {num_key_value_heads}"
    );
    if let Some(head_dim) = usize_key("head_dim")? {
        ensure!(
            head_dim == hidden_size / num_attention_heads,
            "head_dim {head_dim} != hidden_size / num_attention_heads = {}: candle's Llama \
             always uses the latter",
            hidden_size / num_attention_heads
        );
    }
    if let Some(model_type) = json.get("model_type").and_then(Value::as_str) {
        ensure!(
            model_type == "llama",
            "model_type `{model_type}` is not llama"
        );
    }
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
        ensure!(
            act == "silu",
            "hidden_act `{act}`: candle's Llama only has silu"
        );
    }
    for key in ["attention_bias", "mlp_bias"] {
        if let Some(v) = json.get(key) {
            ensure!(
                matches!(v, Value::Null | Value::Bool(false)),
                "{key} = {v}: candle's Llama has no biases"
            );
        }
    }
    let rope = own_rope(json)?;
    let rms_norm_eps = match json.get("rms_norm_eps") {
        None | Some(Value::Null) => 1e-6, // transformers' LlamaConfig default
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("key `rms_norm_eps`: {v} is not a number"))?,
    };
    let eos_token_id = match json.get("eos_token_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .with_context(|| format!("key `eos_token_id`: {v}"))?,
        ),
    };
    let (rope_theta, rope_scaling) = match rope {
        Rope::Default { theta } => (theta as f32, None),
        Rope::Llama3 {
            theta,
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => (
            theta as f32,
            Some(Llama3RopeConfig {
                factor: factor as f32,
                low_freq_factor: low_freq_factor as f32,
                high_freq_factor: high_freq_factor as f32,
                original_max_position_embeddings: original_max_position_embeddings as usize,
                rope_type: Llama3RopeType::Llama3,
            }),
        ),
    };
    Ok(Config {
        hidden_size,
        intermediate_size: required("intermediate_size")?,
        vocab_size: required("vocab_size")?,
        num_hidden_layers: required("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps,
        rope_theta,
        bos_token_id: usize_key("bos_token_id")?.map(|n| n as u32),
        eos_token_id,
        rope_scaling,
        // transformers' LlamaConfig default.
        max_position_embeddings: usize_key("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: match json.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => bail!("key `tie_word_embeddings`: {v} is not a bool"),
        },
    })
}

/// The RoPE of the config: the v4 keys and the v5 key must agree when both are present.
fn own_rope(json: &Map<String, Value>) -> Result<Rope> {
    let present = |k: &str| json.get(k).is_some();
    let v4 = if present("rope_theta") || present("rope_scaling") {
        let theta = match json.get("rope_theta") {
            None | Some(Value::Null) => 10_000.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| anyhow!("key `rope_theta`: {v} is not a number"))?,
        };
        Some(rope_form(theta, json.get("rope_scaling"), "rope_scaling")?)
    } else {
        None
    };
    let v5 = match json.get("rope_parameters") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let theta = v.get("rope_theta").and_then(Value::as_f64).ok_or_else(|| {
                anyhow!("key `rope_parameters.rope_theta` missing or not a number")
            })?;
            Some(rope_form(theta, Some(v), "rope_parameters")?)
        }
    };
    match (v4, v5) {
        (Some(a), Some(b)) => {
            ensure!(
                a == b,
                "rope_theta/rope_scaling ({a:?}) and rope_parameters ({b:?}) disagree"
            );
            Ok(a)
        }
        (Some(a), None) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(Rope::Default { theta: 10_000.0 }),
    }
}

fn rope_form(theta: f64, scaling: Option<&Value>, key: &str) -> Result<Rope> {
    let Some(obj) = scaling.and_then(Value::as_object) else {
        return match scaling {
            None | Some(Value::Null) => Ok(Rope::Default { theta }),
            Some(v) => bail!("key `{key}`: {v} is not an object"),
        };
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |field: &str| -> Result<f64> {
        obj.get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("key `{key}.{field}` missing or not a number"))
    };
    match kind {
        "default" => Ok(Rope::Default { theta }),
        "llama3" => Ok(Rope::Llama3 {
            theta,
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as u64,
        }),
        other => bail!(
            "key `{key}.rope_type`: `{other}` (candle's Llama has only default and llama3 RoPE)"
        ),
    }
}

/// Where candle's reading of config.json differs from ours.
fn config_differences(candle: &Config, ours: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, c: String, o: String| {
        if c != o {
            out.push(format!("candle reads {name} as {c}, config.json means {o}"));
        }
    };
    check(
        "hidden_size",
        candle.hidden_size.to_string(),
        ours.hidden_size.to_string(),
    );
    check(
        "intermediate_size",
        candle.intermediate_size.to_string(),
        ours.intermediate_size.to_string(),
    );
    check(
        "vocab_size",
        candle.vocab_size.to_string(),
        ours.vocab_size.to_string(),
    );
    check(
        "num_hidden_layers",
        candle.num_hidden_layers.to_string(),
        ours.num_hidden_layers.to_string(),
    );
    check(
        "num_attention_heads",
        candle.num_attention_heads.to_string(),
        ours.num_attention_heads.to_string(),
    );
    check(
        "num_key_value_heads",
        candle.num_key_value_heads.to_string(),
        ours.num_key_value_heads.to_string(),
    );
    check(
        "rms_norm_eps",
        candle.rms_norm_eps.to_string(),
        ours.rms_norm_eps.to_string(),
    );
    check(
        "rope_theta",
        candle.rope_theta.to_string(),
        ours.rope_theta.to_string(),
    );
    check(
        "rope_scaling",
        rope_scaling_text(&candle.rope_scaling),
        rope_scaling_text(&ours.rope_scaling),
    );
    check(
        "max_position_embeddings",
        candle.max_position_embeddings.to_string(),
        ours.max_position_embeddings.to_string(),
    );
    check(
        "tie_word_embeddings",
        candle.tie_word_embeddings.to_string(),
        ours.tie_word_embeddings.to_string(),
    );
    check(
        "bos_token_id",
        format!("{:?}", candle.bos_token_id),
        format!("{:?}", ours.bos_token_id),
    );
    check(
        "eos_token_id",
        format!("{:?}", candle.eos_token_id),
        format!("{:?}", ours.eos_token_id),
    );
    out
}

/// candle treats `rope_type: default` like no scaling at all.
fn rope_scaling_text(scaling: &Option<Llama3RopeConfig>) -> String {
    match scaling {
        None
        | Some(Llama3RopeConfig {
            rope_type: Llama3RopeType::Default,
            ..
        }) => "none".into(),
        Some(s) => format!(
            "llama3(factor {}, low_freq_factor {}, high_freq_factor {}, \
             original_max_position_embeddings {})",
            s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings
        ),
    }
}
