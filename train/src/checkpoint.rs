//! Checkpoints of a run: `RUN_DIR/checkpoints/step-NNNNNN/` holding the adapter as a PEFT
//! directory (`adapter_model.safetensors`, `adapter_config.json`), the AdamW state
//! (`optimizer.bpk`), `state.json` (step, seed, config hash, losses) and `manifest.json` (size
//! and SHA-256 of every other file). Everything is written into a temporary directory, flushed
//! to disk and renamed, so a checkpoint is either complete or absent; a checkpoint damaged
//! afterwards (a truncated or altered file) fails its manifest and is passed over. The data
//! cursor and the learning rate are functions of the step, so the step is all a resume needs
//! besides the tensors.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::DType;
use feinschliff_data::atomic_file::{create_temp_dir, sync_dir, sync_dir_files};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::run_config::dtype_named;
use feinschliff_model::io::peft::save_adapter;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::LoraSpec;

/// The optimizer state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The state file of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// The manifest of a checkpoint: size and SHA-256 of every other file.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The largest manifest read; a real one lists a handful of files in well under 1 KiB.
const MANIFEST_LIMIT: u64 = 64 * 1024;
/// Bytes hashed at a time.
const HASH_BUFFER: usize = 64 * 1024;

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
    /// The dtype the frozen base multiplied in (`f32`, `bf16`): what `auto` chose at the
    /// run's start, kept by a resumed run. Absent in checkpoints of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_products: Option<String>,
}

impl CheckpointState {
    /// [`CheckpointState::base_products`] as a dtype; `None` when absent or not a dtype name.
    pub fn base_products(&self) -> Option<DType> {
        self.base_products.as_deref().and_then(dtype_named)
    }
}

/// The checkpoints directory of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint for `state.step` and returns its directory. The caller holds the run
/// directory's lock, so temporary checkpoint directories found there are left by a run that
/// was killed, and are removed first.
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
    remove_partial_checkpoints(&parent)?;
    let final_dir = parent.join(format!("step-{:06}", state.step));
    let temp = create_temp_dir(&final_dir)?;
    let write = || -> Result<(), Error> {
        save_adapter(model, spec, base_model, &temp)?;
        let optim_path = temp.join(OPTIMIZER_FILE);
        optim.save(&optim_path).map_err(|e| {
            Error::invalid(&optim_path, format!("cannot write optimizer state: {e}"))
        })?;
        let state_path = temp.join(STATE_FILE);
        let text = serde_json::to_string_pretty(state).expect("state serializes") + "\n";
        std::fs::write(&state_path, text).map_err(|e| Error::io(&state_path, e))?;
        write_manifest(&temp)?;
        if std::fs::symlink_metadata(&final_dir).is_ok() {
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

/// Removes the temporary directories (`.step-NNNNNN.partial-…`) in `checkpoints`; a symbolic
/// link among them is removed, not followed.
fn remove_partial_checkpoints(checkpoints: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(checkpoints).map_err(|e| Error::io(checkpoints, e))? {
        let path = entry.map_err(|e| Error::io(checkpoints, e))?.path();
        let partial = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".step-") && n.contains(".partial-"));
        if partial {
            std::fs::remove_dir_all(&path)
                .or_else(|_| std::fs::remove_file(&path))
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
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
/// The manifest may name only regular files directly inside `dir` (no path, no symbolic
/// link, no FIFO or device), and no file is read past the size the manifest states.
pub fn verify_checkpoint(dir: &Path) -> Result<(), Error> {
    let path = dir.join(MANIFEST_FILE);
    let manifest = read_manifest(&path)?;
    if let Some(name) = manifest.keys().find(|name| !is_plain_file_name(name)) {
        return Err(Error::checkpoint(
            &path,
            format!("lists `{name}`, which is not the name of a file inside the checkpoint"),
        ));
    }
    for name in [STATE_FILE, OPTIMIZER_FILE] {
        if !manifest.contains_key(name) {
            return Err(Error::checkpoint(&path, format!("does not list {name}")));
        }
    }
    for (name, expected) in &manifest {
        let file = dir.join(name);
        check_file(&file, expected).map_err(|message| Error::checkpoint(&file, message))?;
    }
    Ok(())
}

/// The manifest at `path`, read only if it is a regular file of at most [`MANIFEST_LIMIT`]
/// bytes.
fn read_manifest(path: &Path) -> Result<BTreeMap<String, FileSum>, Error> {
    let incomplete =
        |e: std::io::Error| Error::checkpoint(path, format!("{e} (an incomplete checkpoint)"));
    let file = open_regular_file(path).map_err(incomplete)?;
    let mut text = String::new();
    file.take(MANIFEST_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::checkpoint(path, format!("not a manifest: {e}")))?;
    if text.len() as u64 > MANIFEST_LIMIT {
        return Err(Error::checkpoint(
            path,
            format!("not a manifest: larger than {MANIFEST_LIMIT} bytes"),
        ));
    }
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("not a manifest: {e}")))
}

/// Whether `name` names an entry directly inside a directory: not empty, no separator, not
/// `.` or `..`.
fn is_plain_file_name(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\\', '\0'])
}

/// Checks one file against its manifest entry; reads at most one byte more than it states.
fn check_file(file: &Path, expected: &FileSum) -> Result<(), String> {
    let metadata = std::fs::symlink_metadata(file).map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err(format!(
            "is not a regular file but a {}",
            kind_of(&metadata.file_type())
        ));
    }
    if metadata.len() != expected.bytes {
        return Err(format!(
            "{} bytes, the manifest says {} bytes",
            metadata.len(),
            expected.bytes
        ));
    }
    let opened = open_regular_file(file).map_err(|e| e.to_string())?;
    let actual = stream_sum(opened, expected.bytes.saturating_add(1)).map_err(|e| e.to_string())?;
    if &actual == expected {
        return Ok(());
    }
    let more = match actual.bytes > expected.bytes {
        true => "more than ",
        false => "",
    };
    Err(format!(
        "{more}{} bytes with SHA-256 {}, the manifest says {} bytes with {}",
        actual.bytes, actual.sha256, expected.bytes, expected.sha256
    ))
}

/// What a directory entry that is not a regular file is, for messages.
fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match file_type {
        t if t.is_symlink() => "symbolic link",
        t if t.is_dir() => "directory",
        t if t.is_fifo() => "FIFO",
        t if t.is_socket() => "socket",
        _ => "device",
    }
}

/// Opens `path` for reading if it is a regular file: a symbolic link is not followed, and a
/// FIFO put there after a check neither blocks the open nor is read.
fn open_regular_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    match file.metadata()?.is_file() {
        true => Ok(file),
        false => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )),
    }
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
        let sum = File::open(&path).and_then(|file| stream_sum(file, u64::MAX));
        manifest.insert(name, sum.map_err(|e| Error::io(&path, e))?);
    }
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    sync_dir_files(dir)
}

/// Size and SHA-256 of the first `limit` bytes of `file`, read a fixed-size buffer at a time.
fn stream_sum(file: impl Read, limit: u64) -> std::io::Result<FileSum> {
    let mut reader = file.take(limit);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER];
    let mut bytes = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(FileSum {
        bytes,
        sha256: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A checkpoint directory with a state, an optimizer file and their manifest, plus the
    /// entries `extra` (name, sum) added to the manifest.
    fn checkpoint(root: &Path, extra: &[(&str, FileSum)]) -> PathBuf {
        let dir = root.join("step-000001");
        std::fs::create_dir(&dir).unwrap();
        let state = r#"{"step":1,"seed":0,"config_hash":"x","train_loss":1.0,"eval_loss":null}"#;
        std::fs::write(dir.join(STATE_FILE), state).unwrap();
        std::fs::write(dir.join(OPTIMIZER_FILE), [7u8; 1000]).unwrap();
        write_manifest(&dir).unwrap();
        let path = dir.join(MANIFEST_FILE);
        let mut manifest = read_manifest(&path).unwrap();
        for (name, sum) in extra {
            manifest.insert(name.to_string(), sum.clone());
        }
        std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
        dir
    }

    /// The sum of `bytes`.
    fn sum_of(bytes: &[u8]) -> FileSum {
        stream_sum(bytes, u64::MAX).unwrap()
    }

    /// `verify_checkpoint(dir)`'s error, which must come within five seconds.
    fn refusal(dir: &Path) -> String {
        let (send, receive) = mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || send.send(verify_checkpoint(&dir)).unwrap());
        let result = receive
            .recv_timeout(Duration::from_secs(5))
            .expect("verify_checkpoint hangs");
        result.expect_err("a hostile manifest passed").to_string()
    }

    #[test]
    fn an_intact_checkpoint_passes() {
        let root = tempfile::tempdir().unwrap();
        verify_checkpoint(&checkpoint(root.path(), &[])).unwrap();
    }

    #[test]
    fn manifests_naming_paths_outside_the_checkpoint_are_refused() {
        let root = tempfile::tempdir().unwrap();
        // A file outside whose size and hash the manifest states correctly.
        std::fs::write(root.path().join("x"), "outside").unwrap();
        let outside = sum_of(b"outside");
        let hostile = [
            ("/dev/zero", sum_of(b"")),
            ("../x", outside.clone()),
            ("../step-000001/../x", outside.clone()),
            (".", outside.clone()),
            ("", outside),
        ];
        for (i, (name, sum)) in hostile.into_iter().enumerate() {
            let case = root.path().join(format!("case-{i}"));
            std::fs::create_dir(&case).unwrap();
            std::fs::write(case.join("x"), "outside").unwrap();
            let dir = checkpoint(&case, &[(name, sum)]);
            let err = refusal(&dir);
            assert!(
                err.contains(MANIFEST_FILE) && err.contains(&format!("lists `{name}`")),
                "{name}: {err}"
            );
        }
    }

    /// A file name, the word its refusal must use, and how to plant it in a checkpoint.
    type HostileEntry = (&'static str, &'static str, fn(&Path));

    #[test]
    fn links_fifos_and_directories_inside_the_checkpoint_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("outside"), "outside").unwrap();
        let cases: [HostileEntry; 3] = [
            ("link", "symbolic link", |dir| {
                symlink(dir.join("../../outside"), dir.join("link")).unwrap()
            }),
            ("fifo", "FIFO", |dir| {
                let path = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
                // SAFETY: `path` is a NUL-terminated string that outlives the call.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            }),
            ("sub", "directory", |dir| {
                std::fs::create_dir(dir.join("sub")).unwrap()
            }),
        ];
        for (name, kind, make) in cases {
            let case = root.path().join(name);
            std::fs::create_dir(&case).unwrap();
            let dir = checkpoint(&case, &[(name, sum_of(b"outside"))]);
            make(&dir);
            let err = refusal(&dir);
            assert!(
                err.contains(&format!("{name}: is not a regular file but a {kind}")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_manifest_that_is_not_a_regular_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = checkpoint(root.path(), &[]);
        let manifest = dir.join(MANIFEST_FILE);
        std::fs::remove_file(&manifest).unwrap();
        symlink("/dev/zero", &manifest).unwrap();
        let err = refusal(&dir);
        assert!(err.contains(MANIFEST_FILE), "{err}");
    }

    #[test]
    fn hashing_reads_no_more_than_its_limit() {
        let sum = stream_sum(std::io::repeat(1), 3 * HASH_BUFFER as u64 + 5).unwrap();
        assert_eq!(sum.bytes, 3 * HASH_BUFFER as u64 + 5);
        assert_eq!(sum, sum_of(&vec![1u8; 3 * HASH_BUFFER + 5]));
    }
}
