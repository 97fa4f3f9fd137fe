//! A per-process scratch file in memory (/dev/shm) for readers that take paths.

use std::path::PathBuf;

/// Writes `bytes` to a scratch file named `name` and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from("/dev/shm").join(format!("feinschliff-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}
