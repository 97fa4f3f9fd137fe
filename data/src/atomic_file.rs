//! Replacing a file all at once: the bytes go to a temporary file beside it, are flushed to
//! disk, and the temporary file is renamed over the destination, so a crash or a full disk
//! leaves either the old file or the new one, never a torn one. Directories written the same
//! way (checkpoints, exports) start as [`create_temp_dir`] and are flushed with
//! [`sync_dir_files`] before their rename and [`sync_dir`] after it.
//!
//! Temporary names are fresh (process id and a random part) and created with `create_new` /
//! `create_dir`, which fail on any existing entry, a symbolic link included, instead of
//! opening it: a link planted under a temporary name in a shared cache or run directory is
//! never written through. A destination that is a symbolic link is refused by
//! [`write_file_atomic`]; the files it writes are named by feinschliff inside directories the
//! user chose (a cache entry, a run's `summary.json`), never by the user, so a link there is
//! not the user's. A caller writing a file the user named explicitly, where following a link
//! is expected, resolves the link first (`std::fs::canonicalize`).

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Fresh temporary names tried before giving up (each try fails only when the name exists).
const NAME_ATTEMPTS: usize = 64;

/// Writes `bytes` to `path` through a fsynced temporary file and a rename; a `path` that is a
/// symbolic link is refused (see the module documentation).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_file_atomic_for_append(path, bytes).map(drop)
}

/// [`write_file_atomic`], returning the new file open for appending: the caller keeps writing
/// to the file it created instead of opening `path` again, where something could have been
/// planted since.
pub fn write_file_atomic_for_append(path: &Path, bytes: &[u8]) -> Result<File, Error> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::invalid(
            path,
            "is a symbolic link; refusing to replace it (remove the link)",
        ));
    }
    let (mut file, temp) = create_temp_file(path)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(path, e)
    })?;
    sync_dir(parent_dir(path))?;
    Ok(file)
}

/// Creates `path`, which must not exist yet, from what `write` writes into a fresh temporary
/// file beside it (so large files stream instead of being held in memory): the file is
/// flushed and renamed to `path` only when `write` succeeds, and removed when it fails.
pub fn write_new_file_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), Error>,
) -> Result<(), Error> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::invalid(
            path,
            "already exists; choose a new output file",
        ));
    }
    let (mut file, temp) = create_temp_file(path)?;
    let result = write(&mut file).and_then(|()| {
        file.sync_all()
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    sync_dir(parent_dir(path))
}

/// Creates a new empty file, open for appending, under a fresh temporary name beside `path`;
/// returns it and its name.
fn create_temp_file(path: &Path) -> Result<(File, PathBuf), Error> {
    with_fresh_name(path, |temp| {
        OpenOptions::new().append(true).create_new(true).open(temp)
    })
}

/// Creates a new empty directory under a fresh temporary name beside `path` and returns its
/// name.
pub fn create_temp_dir(path: &Path) -> Result<PathBuf, Error> {
    with_fresh_name(path, |temp| std::fs::create_dir(temp)).map(|((), temp)| temp)
}

/// Runs `create` on fresh names `.NAME.partial-PID-RANDOM` beside `path` until one does not
/// exist yet.
fn with_fresh_name<T>(
    path: &Path,
    mut create: impl FnMut(&Path) -> std::io::Result<T>,
) -> Result<(T, PathBuf), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(path, "not a file name"))?
        .to_string_lossy();
    // Seeded from the operating system's randomness per thread; the counter, the time and
    // the process id make names of one process differ even without it.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    for _ in 0..NAME_ATTEMPTS {
        let random = RandomState::new().hash_one((
            CALLS.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now(),
        ));
        let pid = std::process::id();
        let temp = path.with_file_name(format!(".{name}.partial-{pid}-{random:016x}"));
        match create(&temp) {
            Ok(made) => return Ok((made, temp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&temp, e)),
        }
    }
    Err(Error::invalid(
        path,
        format!("no free temporary name beside it after {NAME_ATTEMPTS} tries"),
    ))
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Every name in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_link_at_the_final_name_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let entry = cache.join("entry.json");
        symlink(&victim, &entry).unwrap();
        let err = write_file_atomic(&entry, b"new").unwrap_err().to_string();
        assert!(
            err.contains("entry.json") && err.contains("symbolic link"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert!(std::fs::symlink_metadata(&entry).unwrap().is_symlink());
        assert_eq!(names(&cache), ["entry.json"], "a temporary file was left");
    }

    #[test]
    fn links_planted_at_temporary_names_are_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        // The names the old code used (`.NAME.partial-PID-N` for small N) and then some.
        let pid = std::process::id();
        for n in 0..64 {
            let planted = run.join(format!(".summary.json.partial-{pid}-{n}"));
            symlink(&victim, planted).unwrap();
        }
        let summary = run.join("summary.json");
        write_file_atomic(&summary, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&summary).unwrap(), "{}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(names(&run).len(), 65, "only summary.json is new");
    }

    #[test]
    fn a_taken_temporary_name_is_skipped_for_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let out = dir.path().join("out");
        let mut tries = Vec::new();
        let ((), temp) = with_fresh_name(&out, |temp| {
            tries.push(temp.to_path_buf());
            match tries.len() {
                // A link planted under the first name: `create_dir` fails on it.
                1 => symlink(&victim, temp).and_then(|()| std::fs::create_dir(temp)),
                _ => std::fs::create_dir(temp),
            }
        })
        .unwrap();
        assert_eq!(tries.len(), 2);
        assert_ne!(tries[0], tries[1]);
        assert!(std::fs::symlink_metadata(&temp).unwrap().is_dir());
        assert!(names(&victim).is_empty());
    }

    #[test]
    fn a_file_kept_for_appending_is_the_file_under_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("metrics.jsonl");
        std::fs::write(&log, "old\n").unwrap();
        let mut file = write_file_atomic_for_append(&log, b"kept\n").unwrap();
        file.write_all(b"appended\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "kept\nappended\n");
    }
}
