//! Exports of a run: the adapter of a chosen checkpoint as a PEFT directory.

use std::path::{Path, PathBuf};

use crate::checkpoint::list_checkpoints;
use crate::error::ModelError;
use crate::io::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// Copies the adapter of checkpoint `which` (`last`, `best` or `step-N`) of `run_dir` into a
/// new directory `out` (written beside it under a temporary name, then renamed).
pub fn export_adapter(run_dir: &Path, which: &str, out: &Path) -> Result<PathBuf, ModelError> {
    if out.exists() {
        return Err(ModelError::invalid(
            out,
            "already exists; choose a new output directory",
        ));
    }
    let checkpoints = list_checkpoints(run_dir)?;
    if checkpoints.is_empty() {
        return Err(ModelError::invalid(
            run_dir,
            "is not a run directory with checkpoints",
        ));
    }
    let chosen = match which {
        "last" => checkpoints.last(),
        "best" => checkpoints
            .iter()
            .filter(|(_, s)| s.eval_loss.is_some())
            .min_by(|a, b| a.1.eval_loss.unwrap().total_cmp(&b.1.eval_loss.unwrap())),
        other => {
            let step: usize = other
                .strip_prefix("step-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    ModelError::Usage(format!(
                        "--checkpoint `{other}`: expected last, best or step-N"
                    ))
                })?;
            checkpoints.iter().find(|(_, s)| s.step == step)
        }
    };
    let (source, _) = chosen.ok_or_else(|| {
        let have: Vec<String> = checkpoints
            .iter()
            .map(|(_, s)| format!("step-{}", s.step))
            .collect();
        ModelError::invalid(
            run_dir,
            format!("no checkpoint `{which}` (have: {})", have.join(", ")),
        )
    })?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let temp = parent.join(format!(
        ".{}.partial-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let copy = || -> Result<(), ModelError> {
        std::fs::create_dir(&temp).map_err(|e| ModelError::io(&temp, e))?;
        for file in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
            std::fs::copy(source.join(file), temp.join(file))
                .map_err(|e| ModelError::io(source.join(file), e))?;
        }
        std::fs::rename(&temp, out).map_err(|e| ModelError::io(out, e))
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&temp);
    })?;
    Ok(out.to_path_buf())
}
