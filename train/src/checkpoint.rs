//! Checkpoints of a run: `RUN_DIR/checkpoints/step-NNNNNN/` holding the adapter as a PEFT
//! directory (`adapter_model.safetensors`, `adapter_config.json`), the AdamW state
//! (`optimizer.bpk`) and `state.json` (step, seed, config hash, losses). Everything is written
//! into a temporary directory and renamed, so a checkpoint is either complete or absent. The
//! data cursor and the learning rate are functions of the step, so the step is all a resume
//! needs besides the tensors.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::io::peft::save_adapter;
use crate::model::llama::Llama;
use crate::model::lora::LoraSpec;

/// The optimizer state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The state file of a checkpoint.
pub const STATE_FILE: &str = "state.json";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: usize,
    /// The run's seed.
    pub seed: u64,
    /// Hash of the configuration that shapes the run (see `RunConfig::training_hash`).
    pub config_hash: String,
    /// Training loss of the last step.
    pub train_loss: f64,
    /// Validation loss at this step, if evaluated.
    pub eval_loss: Option<f64>,
}

/// The checkpoints directory of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint for `state.step` and returns its directory.
pub fn write_checkpoint(
    run_dir: &Path,
    model: &Llama,
    spec: &LoraSpec,
    base_model: &str,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<PathBuf, ModelError> {
    let parent = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let name = format!("step-{:06}", state.step);
    let final_dir = parent.join(&name);
    let temp = parent.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&temp);
    let write = || -> Result<(), ModelError> {
        std::fs::create_dir(&temp).map_err(|e| ModelError::io(&temp, e))?;
        save_adapter(model, spec, base_model, &temp)?;
        let optim_path = temp.join(OPTIMIZER_FILE);
        optim.save(&optim_path).map_err(|e| {
            ModelError::invalid(&optim_path, format!("cannot write optimizer state: {e}"))
        })?;
        let state_path = temp.join(STATE_FILE);
        let text = serde_json::to_string_pretty(state).expect("state serializes") + "\n";
        std::fs::write(&state_path, text).map_err(|e| ModelError::io(&state_path, e))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| ModelError::io(&final_dir, e))?;
        }
        std::fs::rename(&temp, &final_dir).map_err(|e| ModelError::io(&final_dir, e))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&temp);
    })?;
    Ok(final_dir)
}

/// Every complete checkpoint of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(PathBuf, CheckpointState)>, ModelError> {
    let dir = checkpoints_dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| ModelError::io(&dir, e))?.path();
        let is_step = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("step-"));
        if is_step {
            found.push((path.clone(), read_state(&path)?));
        }
    }
    found.sort_by_key(|(_, state)| state.step);
    Ok(found)
}

/// The `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<CheckpointState, ModelError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::invalid(&path, format!("not a checkpoint state: {e}")))
}

/// Removes all but the newest `keep_last` checkpoints and the one with the best eval loss.
pub fn prune_checkpoints(run_dir: &Path, keep_last: usize) -> Result<(), ModelError> {
    let all = list_checkpoints(run_dir)?;
    let best = all
        .iter()
        .filter_map(|(_, s)| s.eval_loss.map(|l| (s.step, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(step, _)| step);
    let newest_kept = all.len().saturating_sub(keep_last);
    for (i, (path, state)) in all.iter().enumerate() {
        if i < newest_kept && Some(state.step) != best {
            std::fs::remove_dir_all(path).map_err(|e| ModelError::io(path, e))?;
        }
    }
    Ok(())
}
