//! Exports of a run: the adapter of a chosen checkpoint as a PEFT directory, or the base model
//! with that adapter merged in as a Hugging Face model directory. Outputs are written under a
//! temporary name beside the destination and renamed at the end; an existing destination is
//! never touched.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::checkpoint::list_checkpoints;
use crate::run_config::RunConfig;
use burn::tensor::DType;
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::hf_export::write_merged;
use feinschliff_model::io::new_dir::write_new_dir;
use feinschliff_model::io::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter};
use feinschliff_model::io::safetensors_out::StoreDtype;
use feinschliff_model::linear::BaseStorage;
use feinschliff_model::lora::LoraSpec;
use feinschliff_model::quant::BaseQuant;

/// The directory of checkpoint `which` (`last`, `best` = lowest eval loss, or `step-N`).
pub fn resolve_checkpoint(run_dir: &Path, which: &str) -> Result<PathBuf, Error> {
    let found = list_checkpoints(run_dir)?;
    let checkpoints = found.good;
    if let (true, Some((dir, reason))) = (checkpoints.is_empty(), found.damaged.last()) {
        return Err(Error::invalid(
            run_dir,
            format!(
                "has no intact checkpoint ({} damaged; {}: {reason})",
                found.damaged.len(),
                dir.display()
            ),
        ));
    }
    if checkpoints.is_empty() {
        return Err(Error::invalid(
            run_dir,
            "is not a run directory with checkpoints",
        ));
    }
    let chosen = match which {
        "last" => checkpoints.last(),
        "best" => checkpoints
            .iter()
            .filter_map(|c| c.1.eval_loss.map(|loss| (c, loss)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c),
        other => {
            let step: usize = other
                .strip_prefix("step-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--checkpoint `{other}`: expected last, best or step-N"
                    ))
                })?;
            checkpoints.iter().find(|(_, s)| s.step == step)
        }
    };
    chosen.map(|(dir, _)| dir.clone()).ok_or_else(|| {
        let have: Vec<String> = checkpoints
            .iter()
            .map(|(_, s)| format!("step-{}", s.step))
            .collect();
        Error::invalid(
            run_dir,
            format!("no checkpoint `{which}` (have: {})", have.join(", ")),
        )
    })
}

/// Copies the adapter of checkpoint `which` of `run_dir` into the new directory `out`.
pub fn export_adapter(run_dir: &Path, which: &str, out: &Path) -> Result<PathBuf, Error> {
    let source = resolve_checkpoint(run_dir, which)?;
    write_new_dir(out, |temp| {
        for file in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
            std::fs::copy(source.join(file), temp.join(file))
                .map_err(|e| Error::io(source.join(file), e))?;
        }
        Ok(())
    })
}

/// The run's base model (from `config.toml`'s `model.path`, on its `model.device`, quantized
/// as `model.base_quant` says: the base the run trained on) with the adapter of checkpoint
/// `which` attached, and the adapter's settings.
pub fn load_run_model(run_dir: &Path, which: &str) -> Result<(HfModel, LoraSpec), Error> {
    let (model, spec, _) = load_run_adapter_onto(run_dir, which, None)?;
    Ok((model, spec))
}

/// [`load_run_model`], onto the dense f32 model in `base` instead of the run's own base when
/// given; also returns the run's configuration.
fn load_run_adapter_onto(
    run_dir: &Path,
    which: &str,
    base: Option<&Path>,
) -> Result<(HfModel, LoraSpec, RunConfig), Error> {
    let source = resolve_checkpoint(run_dir, which)?;
    let config_path = run_dir.join("config.toml");
    let config = RunConfig::load(&config_path, &[])?;
    let device = config
        .model
        .device
        .parse::<DeviceChoice>()
        .map_err(Error::Usage)?
        .device();
    // Dense matrices in f32 whatever the run stored them in; quantized ones as the run
    // trained on them (merging into the dequantized values it saw).
    let (path, quant) = match base {
        Some(dir) => (dir, BaseQuant::None),
        None => (config.model.path.as_path(), config.model.base_quant),
    };
    let storage = BaseStorage {
        dtype: DType::F32,
        quant,
    };
    let mut model = HfModel::load_as(path, storage, &device)?;
    let spec = load_adapter(&mut model.model, &source, &device)?;
    Ok((model, spec, config))
}

/// What [`export_merged`] merged into.
pub struct MergedBase {
    /// The model directory (or GGUF file) the base came from.
    pub path: PathBuf,
    /// How the run kept its base (`none` when it trained on a dense one).
    pub trained_quant: BaseQuant,
    /// Whether the merge went into the run's own base (dequantized when it was quantized),
    /// or into another model given with `--base`.
    pub own_base: bool,
}

/// Writes the run's base model with the adapter of checkpoint `which` merged into the new
/// directory `out`, in `dtype`, sharded above `max_shard_bytes`. The base is the one the run
/// trained on (dequantized when quantized) unless `base` names another model directory (a
/// full-precision original of a quantized run, say: then the merged model differs from what
/// was trained and evaluated).
pub fn export_merged(
    run_dir: &Path,
    which: &str,
    out: &Path,
    dtype: StoreDtype,
    max_shard_bytes: usize,
    base: Option<&Path>,
) -> Result<MergedBase, Error> {
    let (model, _, config) = load_run_adapter_onto(run_dir, which, base)?;
    write_new_dir(out, |temp| {
        write_merged(
            &model.model,
            &model.config,
            &model.dir,
            temp,
            dtype,
            max_shard_bytes,
        )
    })?;
    Ok(MergedBase {
        path: base.map_or_else(|| config.model.path.clone(), Path::to_path_buf),
        trained_quant: config.model.base_quant,
        own_base: base.is_none(),
    })
}

/// A size such as `5GB`, `500MB`, `10KB` or a plain byte count (decimal units, as transformers).
pub fn parse_size(text: &str) -> Result<usize, Error> {
    let upper = text.trim().to_ascii_uppercase();
    let (number, unit) = match upper.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => upper.split_at(at),
        None => (upper.as_str(), "B"),
    };
    let factor = match unit {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => {
            return Err(Error::Usage(format!(
                "`{text}`: unknown unit (B, KB, MB, GB)"
            )));
        }
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| Error::Usage(format!("`{text}` is not a size")))?;
    if value.is_nan() || value <= 0.0 {
        return Err(Error::Usage(format!("`{text}` must be positive")));
    }
    Ok((value * factor) as usize)
}
