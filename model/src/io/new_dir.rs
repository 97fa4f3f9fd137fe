//! Creating an output directory all at once: it is written under a temporary name beside its
//! destination, flushed to disk and renamed at the end, so a failure leaves nothing under the
//! final name and an existing directory is never touched.

use std::path::{Path, PathBuf};

use feinschliff_data::atomic_file::{sync_dir, sync_dir_files};

use crate::Error;

/// Runs `write` on a temporary directory beside `out`, then renames it to `out`; on failure
/// the temporary directory is removed. `out` must not exist yet.
pub fn write_new_dir(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    if out.exists() {
        return Err(Error::invalid(
            out,
            "already exists; choose a new output directory",
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::invalid(out, "not a directory name"))?;
    let temp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&temp);
    let result = write(&temp)
        .and_then(|()| sync_dir_files(&temp))
        .and_then(|()| std::fs::rename(&temp, out).map_err(|e| Error::io(out, e)))
        .and_then(|()| sync_dir(parent));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.map(|()| out.to_path_buf())
}
