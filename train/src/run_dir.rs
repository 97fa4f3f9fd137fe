//! The run directory: locked before anything in it is read or decided, so two runs never mix
//! their files; then the resolved configuration, `metrics.jsonl`, `loss.png` and
//! `summary.json` (checkpoints are [`crate::checkpoint`]'s).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use feinschliff_data::atomic_file::{write_file_atomic, write_file_atomic_for_append};

use crate::Error;
use crate::plot::{write_curve_plot, write_loss_plot};

/// The lock file inside a run directory.
const LOCK_FILE: &str = ".lock";

/// A run directory this process holds the lock of (until the value is dropped).
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
    /// The locked file; the operating system releases the lock when the process ends, however
    /// it ends.
    _lock: File,
    /// Whether this process created the directory.
    created: bool,
}

impl RunDir {
    /// Creates `path` if needed and takes its lock; fails at once when another run holds it.
    pub fn lock(path: &Path) -> Result<Self, Error> {
        if path.exists() && !path.is_dir() {
            return Err(Error::invalid(
                path,
                "is not a directory; output.run_dir must name a directory",
            ));
        }
        let created = !path.exists();
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        // A symbolic link planted as the lock file is not followed (nor a file created
        // where it points): the open fails.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                path: path.to_path_buf(),
                _lock: file,
                created,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::invalid(
                path,
                "is in use by another training run (its lock file .lock is held); wait for it or choose another output.run_dir",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&lock_path, e)),
        }
    }

    /// Removes the directory again if this process created it and wrote nothing but the lock
    /// into it (a run that failed while loading leaves nothing behind).
    pub fn remove_if_unused(self) {
        let only_lock = std::fs::read_dir(&self.path).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .all(|entry| entry.file_name() == LOCK_FILE)
        });
        if self.created && only_lock {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `config.toml` (the resolved configuration).
    pub fn write_config(&self, toml: &str) -> Result<(), Error> {
        write_file_atomic(&self.join("config.toml"), toml.as_bytes())
    }

    /// Writes `summary.json`.
    pub fn write_summary(&self, json: &str) -> Result<(), Error> {
        write_file_atomic(&self.join("summary.json"), json.as_bytes())
    }

    /// Draws `loss.png` from the step and eval lines of `metrics.jsonl`; for DPO runs also
    /// `reward_margin.png` and `reward_accuracy.png`.
    pub fn plot_losses(&self) -> Result<(), Error> {
        let metrics = self.join(METRICS_FILE);
        let text = std::fs::read_to_string(&metrics).map_err(|e| Error::io(&metrics, e))?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let points = |key: &str| -> Vec<(f64, f64)> {
            lines
                .iter()
                .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
                .collect()
        };
        write_loss_plot(
            &self.join("loss.png"),
            &points("loss"),
            &points("eval_loss"),
        )?;
        for key in ["reward_margin", "reward_accuracy"] {
            let (train, eval) = (points(key), points(&format!("eval_{key}")));
            if !train.is_empty() || !eval.is_empty() {
                let path = self.join(&format!("{key}.png"));
                write_curve_plot(&path, &key.replace('_', " "), &train, &eval)?;
            }
        }
        Ok(())
    }
}

/// The metrics file of a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// `metrics.jsonl`, open for appending one JSON object per line.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log of `run_dir`, first dropping lines of steps after `keep_until` (left by a
    /// run that stopped after its last checkpoint).
    pub fn open(run_dir: &RunDir, keep_until: usize) -> Result<Self, Error> {
        let path = run_dir.join(METRICS_FILE);
        let kept: String = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|step| step as usize <= keep_until)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(_) => String::new(),
        };
        let file = write_file_atomic_for_append(&path, kept.as_bytes())?;
        Ok(Self { file, path })
    }

    /// Appends `line`.
    pub fn write(&mut self, line: serde_json::Value) -> Result<(), Error> {
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}
