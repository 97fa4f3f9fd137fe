//! Checkpoints of a run: `RUN_DIR/checkpoints/step-NNNNNN/` holding the adapter as a PEFT
//! directory (`adapter_model.safetensors`, `adapter_config.json`), the AdamW state
//! (`optimizer.bpk`), `state.json` (step, seed, config hash, losses) and `manifest.json` (size
//! and SHA-256 of every other file). Everything is written into a temporary directory, flushed
//! to disk and renamed, so a checkpoint is either complete or absent; a checkpoint damaged
//! afterwards (a truncated or altered file) fails its manifest and is passed over. The data
//! cursor and the learning rate are functions of the step, so the step is all a resume needs
//! besides the tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use feinschliff_data::atomic_file::{sync_dir, sync_dir_files};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use feinschliff_model::io::peft::save_adapter;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::LoraSpec;

/// The optimizer state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The state file of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// The manifest of a checkpoint: size and SHA-256 of every other file.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Size and SHA-256 of one file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileSum {
    bytes: u64,
    sha256: String,
}

/// The checkpoints of a run directory.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    /// Complete checkpoints whose files match their manifest, oldest first.
    pub good: Vec<(PathBuf, CheckpointState)>,
    /// Checkpoint directories that fail their manifest, with the reason.
    pub damaged: Vec<(PathBuf, String)>,
}

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
) -> Result<PathBuf, Error> {
    let parent = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = format!("step-{:06}", state.step);
    let final_dir = parent.join(&name);
    let temp = parent.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&temp);
    let write = || -> Result<(), Error> {
        std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
        save_adapter(model, spec, base_model, &temp)?;
        let optim_path = temp.join(OPTIMIZER_FILE);
        optim.save(&optim_path).map_err(|e| {
            Error::invalid(&optim_path, format!("cannot write optimizer state: {e}"))
        })?;
        let state_path = temp.join(STATE_FILE);
        let text = serde_json::to_string_pretty(state).expect("state serializes") + "\n";
        std::fs::write(&state_path, text).map_err(|e| Error::io(&state_path, e))?;
        write_manifest(&temp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&temp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&parent)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&temp);
    })?;
    Ok(final_dir)
}

/// The checkpoints of a run: those that pass their manifest, oldest first, and those that do
/// not.
pub fn list_checkpoints(run_dir: &Path) -> Result<Checkpoints, Error> {
    let dir = checkpoints_dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Checkpoints::default());
    };
    let mut found = Checkpoints::default();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let is_step = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("step-"));
        if !is_step {
            continue;
        }
        match verify_checkpoint(&path).and_then(|()| read_state(&path)) {
            Ok(state) => found.good.push((path, state)),
            Err(reason) => found.damaged.push((path, reason.to_string())),
        }
    }
    found.good.sort_by_key(|(_, state)| state.step);
    found.damaged.sort();
    Ok(found)
}

/// Checks every file of a checkpoint against its manifest; the error names the file at fault.
pub fn verify_checkpoint(dir: &Path) -> Result<(), Error> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::checkpoint(&path, format!("{e} (an incomplete checkpoint)")))?;
    let manifest: BTreeMap<String, FileSum> = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("not a manifest: {e}")))?;
    for name in [STATE_FILE, OPTIMIZER_FILE] {
        if !manifest.contains_key(name) {
            return Err(Error::checkpoint(&path, format!("does not list {name}")));
        }
    }
    for (name, expected) in &manifest {
        let file = dir.join(name);
        let actual = file_sum(&file).map_err(|e| Error::checkpoint(&file, e.to_string()))?;
        if &actual != expected {
            return Err(Error::checkpoint(
                &file,
                format!(
                    "{} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                    actual.bytes, actual.sha256, expected.bytes, expected.sha256
                ),
            ));
        }
    }
    Ok(())
}

/// Writes the manifest of `dir` and flushes every file of it to disk.
fn write_manifest(dir: &Path) -> Result<(), Error> {
    let mut manifest = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        manifest.insert(name, file_sum(&path).map_err(|e| Error::io(&path, e))?);
    }
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    sync_dir_files(dir)
}

/// Size and SHA-256 of a file.
fn file_sum(path: &Path) -> std::io::Result<FileSum> {
    let bytes = std::fs::read(path)?;
    let digest = Sha256::digest(&bytes);
    Ok(FileSum {
        bytes: bytes.len() as u64,
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// The `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<CheckpointState, Error> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&path, format!("not a checkpoint state: {e}")))
}

/// Removes all but the newest `keep_last` checkpoints and the one with the best eval loss.
pub fn prune_checkpoints(run_dir: &Path, keep_last: usize) -> Result<(), Error> {
    let all = list_checkpoints(run_dir)?.good;
    let best = all
        .iter()
        .filter_map(|(_, s)| s.eval_loss.map(|l| (s.step, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(step, _)| step);
    let newest_kept = all.len().saturating_sub(keep_last);
    for (i, (path, state)) in all.iter().enumerate() {
        if i < newest_kept && Some(state.step) != best {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(())
}
