//! Where a run starts: fresh in an empty run directory, or, with `--resume`, from the last good
//! checkpoint of a run with the same training-shaping configuration. Decided under the run
//! directory's lock.

use std::path::PathBuf;

use crate::Error;
use crate::checkpoint::{CheckpointState, list_checkpoints};
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;

/// The checkpoint a resumed run continues from.
pub struct ResumePoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its state (step, seed, configuration hash, losses).
    pub state: CheckpointState,
}

/// `None` for a fresh run; the checkpoint to continue from with `resume`. Refuses a fresh run in
/// a directory that holds checkpoints, a resume without one, and a resume with another
/// configuration. Damaged checkpoints are passed over with a note.
pub fn resume_point(
    run_dir: &RunDir,
    resume: bool,
    config: &RunConfig,
    progress: &mut dyn Progress,
) -> Result<Option<ResumePoint>, Error> {
    let existing = list_checkpoints(&run_dir.path)?;
    for (dir, reason) in &existing.damaged {
        progress.note(&format!(
            "passing over damaged checkpoint {}: {reason}",
            dir.display()
        ));
    }
    let any_checkpoint = !existing.good.is_empty() || !existing.damaged.is_empty();
    match (resume, existing.good.last()) {
        (false, _) if any_checkpoint => Err(Error::invalid(
            &run_dir.path,
            "already holds checkpoints of a run: pass --resume to continue it, or choose another output.run_dir",
        )),
        (false, _) => Ok(None),
        (true, None) => Err(Error::invalid(
            &run_dir.path,
            "has no checkpoint to resume from",
        )),
        (true, Some((dir, state))) if state.config_hash != config.training_hash() => {
            Err(Error::invalid(
                dir,
                "was trained with a different configuration (model, lora, data or optimisation); resume needs the same",
            ))
        }
        (true, Some((dir, state))) => Ok(Some(ResumePoint {
            dir: dir.clone(),
            state: state.clone(),
        })),
    }
}
