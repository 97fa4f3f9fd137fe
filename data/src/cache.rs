//! The token cache: tokenized examples on disk as Arrow IPC (columns `split`, `ids`,
//! `trained`), with their statistics beside them in JSON, named by a key that hashes everything
//! that shapes them — the data files' contents, `tokenizer.json`, `tokenizer_config.json`, the
//! chat template, and the `[data]` options — so a changed input or option never reuses a stale
//! cache. Both files are written under temporary names and renamed, the statistics last: a
//! cache entry counts only when both are there.

use std::path::{Path, PathBuf};

use polars_core::prelude::{
    BooleanChunked, Column, DataFrame, IntoSeries, ListChunked, NewChunkedArray, UInt32Chunked,
};
use polars_io::SerReader;
use polars_io::SerWriter;
use polars_io::ipc::{IpcReader, IpcWriter};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::atomic_file::write_file_atomic;
use crate::format::Example;
use crate::prepared::{Prepared, SplitStats};

/// Bump when the meaning of cached examples changes.
const CACHE_VERSION: &str = "feinschliff-token-cache-1";

/// A cache entry: where its two files are.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The examples (Arrow IPC).
    pub examples: PathBuf,
    /// The statistics (JSON).
    pub stats: PathBuf,
}

impl CacheEntry {
    /// The entry for `key` in `dir`.
    pub fn new(dir: &Path, key: &str) -> Self {
        Self {
            examples: dir.join(format!("{key}.arrow")),
            stats: dir.join(format!("{key}.json")),
        }
    }

    /// The cached examples, or `None` when the entry is not there (or unreadable, which is
    /// reported by rebuilding it). Only regular files are read: a symbolic link, FIFO or
    /// device under an entry's name in a shared cache directory counts as no entry.
    pub fn load(&self) -> Option<Prepared> {
        let stats = open_regular_file(&self.stats)?;
        let stats: (SplitStats, SplitStats) =
            serde_json::from_reader(std::io::BufReader::new(stats)).ok()?;
        let file = open_regular_file(&self.examples)?;
        let frame = IpcReader::new(file).finish().ok()?;
        let split = frame.column("split").ok()?.u32().ok()?.clone();
        let ids = frame.column("ids").ok()?.list().ok()?.clone();
        let trained = frame.column("trained").ok()?.list().ok()?.clone();
        let mut prepared = Prepared {
            train: Vec::new(),
            valid: Vec::new(),
            train_stats: stats.0,
            valid_stats: stats.1,
        };
        for ((split, ids), trained) in split
            .into_no_null_iter()
            .zip(ids.series_iter())
            .zip(trained.series_iter())
        {
            let ids: Vec<u32> = ids?.u32().ok()?.into_no_null_iter().collect();
            let trained: Vec<bool> = (trained?.bool().ok()?.downcast_iter())
                .flat_map(|array| array.values_iter())
                .collect();
            if ids.len() != trained.len() {
                return None;
            }
            let example = Example { ids, trained };
            match split {
                0 => prepared.train.push(example),
                _ => prepared.valid.push(example),
            }
        }
        let counts_match = prepared.train.len() == prepared.train_stats.examples
            && prepared.valid.len() == prepared.valid_stats.examples;
        counts_match.then_some(prepared)
    }

    /// Writes `prepared` as this entry (examples first, statistics last).
    pub fn store(&self, prepared: &Prepared) -> Result<(), Error> {
        if let Some(dir) = self.examples.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let all: Vec<(u32, &Example)> = prepared
            .train
            .iter()
            .map(|e| (0, e))
            .chain(prepared.valid.iter().map(|e| (1, e)))
            .collect();
        let split = UInt32Chunked::from_vec("split".into(), all.iter().map(|(s, _)| *s).collect())
            .into_series();
        let ids: ListChunked = all
            .iter()
            .map(|(_, e)| Some(UInt32Chunked::from_vec("".into(), e.ids.clone()).into_series()))
            .collect();
        let trained: ListChunked = all
            .iter()
            .map(|(_, e)| Some(BooleanChunked::from_slice("".into(), &e.trained).into_series()))
            .collect();
        let mut frame = DataFrame::new_infer_height(vec![
            Column::from(split),
            Column::from(ids.with_name("ids".into()).into_series()),
            Column::from(trained.with_name("trained".into()).into_series()),
        ])
        .map_err(|e| Error::invalid(&self.examples, format!("cannot build cache: {e}")))?;
        let mut bytes = Vec::new();
        IpcWriter::new(&mut bytes)
            .finish(&mut frame)
            .map_err(|e| Error::invalid(&self.examples, format!("cannot write cache: {e}")))?;
        write_file_atomic(&self.examples, &bytes)?;
        let stats = serde_json::to_vec_pretty(&(&prepared.train_stats, &prepared.valid_stats))
            .expect("JSON");
        write_file_atomic(&self.stats, &stats)
    }
}

/// `path` opened for reading if it is a regular file (not followed if a symbolic link).
fn open_regular_file(path: &Path) -> Option<std::fs::File> {
    let regular = std::fs::symlink_metadata(path).ok()?.is_file();
    regular.then(|| std::fs::File::open(path).ok()).flatten()
}

/// The cache key: a hash of every input that shapes the examples.
pub fn cache_key(
    train_files: &[PathBuf],
    valid_files: &[PathBuf],
    tokenizer_dir: &Path,
    options: &serde_json::Value,
) -> Result<String, Error> {
    let mut hash = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        hash.update((label.len() as u64).to_le_bytes());
        hash.update(label.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    add("version", CACHE_VERSION.as_bytes());
    add("options", options.to_string().as_bytes());
    for (split, files) in [("train", train_files), ("valid", valid_files)] {
        for path in files {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            add(split, &bytes);
        }
    }
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        let path = tokenizer_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => add(name, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => add(name, b"<none>"),
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    let digest = hash.finalize();
    Ok(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
}
