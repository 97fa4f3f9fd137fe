//! Creating an output directory all at once: it is written under a fresh temporary name beside
//! its destination, flushed to disk and renamed at the end, so a failure leaves nothing under
//! the final name and an existing directory is never touched.

use std::path::{Path, PathBuf};

use feinschliff_data::atomic_file::{create_temp_dir, parent_dir, sync_dir, sync_dir_files};

use crate::Error;

/// Runs `write` on a new, empty temporary directory beside `out`, then renames it to `out`;
/// on failure the temporary directory is removed. `out` must not exist yet (not even as a
/// dangling symbolic link).
pub fn write_new_dir(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::invalid(
            out,
            "already exists; choose a new output directory",
        ));
    }
    let parent = parent_dir(out);
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let temp = create_temp_dir(out)?;
    let result = write(&temp)
        .and_then(|()| sync_dir_files(&temp))
        .and_then(|()| std::fs::rename(&temp, out).map_err(|e| Error::io(out, e)))
        .and_then(|()| sync_dir(parent));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.map(|()| out.to_path_buf())
}
