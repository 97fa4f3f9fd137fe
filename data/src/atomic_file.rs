//! Replacing a file all at once: the bytes go to a temporary file beside it, are flushed to
//! disk, and the temporary file is renamed over the destination, so a crash or a full disk
//! leaves either the old file or the new one, never a torn one. Directories written the same
//! way (checkpoints, exports) are flushed with [`sync_dir_files`] before their rename and
//! [`sync_dir`] after it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Error;

/// Writes `bytes` to `path` through a fsynced temporary file and a rename.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(path, "not a file name"))?;
    // Unique per process and call, so concurrent writers never share a temporary file.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let temp = path.with_file_name(format!(
        ".{}.partial-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(path, e)
    })?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Flushes every file directly in `dir`, then the directory itself, to disk.
pub fn sync_dir_files(dir: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (new names, renames) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
