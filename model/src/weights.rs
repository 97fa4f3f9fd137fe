//! The tensors of a Hugging Face checkpoint: one `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`.
//!
//! Files are memory-mapped; a tensor's bytes are converted to f32 only when the model takes it,
//! so the base weights exist once in memory. Every tensor may be taken once, and whatever the
//! model did not take is an error naming it (known leftovers such as `rotary_emb.inv_freq`
//! excepted): a checkpoint never loads half-way unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::Error;

/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Tensor names that checkpoints may carry without the model using them.
fn is_known_leftover(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// One memory-mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as this struct; a checkpoint that
        // another process truncates while we read it is outside what we can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        &self.map[self.data_start + start..self.data_start + end]
    }

    /// Drops the pages of `info`'s bytes from the process's resident memory once they have been
    /// read: a file-backed page stays resident (and counts in RSS) while mapped, so loading an
    /// 8B checkpoint would otherwise hold all of its 16 GB of file pages until the end.
    #[cfg_attr(not(unix), allow(unused_variables))]
    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        let (start, end) = info.data_offsets;
        // SAFETY: the map is a read-only shared mapping of a file: MADV_DONTNEED only drops
        // its pages from this process (whole pages, so parts of the header or a neighbouring
        // tensor may go too), and a later read faults them in again from the file, with the
        // same contents. No slice of these bytes is borrowed here (`bytes`' result
        // is used and dropped before this is called, under `&mut WeightFiles`). A failure
        // (an old kernel) only keeps the pages resident.
        #[cfg(unix)]
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.data_start + start,
                end - start,
            )
        };
    }
}

/// The checkpoint's tensors, handed out by name.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    location: BTreeMap<String, usize>,
    taken: BTreeSet<String>,
}

impl WeightFiles {
    /// Opens the checkpoint in a model directory: the index if there is one, else the single file.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (files, declared) = if index.exists() {
            let (shards, declared) = read_index(&index)?;
            let files = shards
                .iter()
                .map(|shard| MappedFile::open(&dir.join(shard)))
                .collect::<Result<Vec<_>, _>>()?;
            (files, Some((index, declared)))
        } else if single.exists() {
            (vec![MappedFile::open(&single)?], None)
        } else {
            return Err(Error::invalid(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
            ));
        };
        let mut location = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.metadata.tensors().into_keys() {
                if let Some(other) = location.insert(name.clone(), i) {
                    return Err(Error::tensor(
                        &file.path,
                        &name,
                        format!("is also in {}", files[other].path.display()),
                    ));
                }
            }
        }
        if let Some((index, declared)) = declared {
            check_index(&index, &declared, &files, &location)?;
        }
        Ok(Self {
            files,
            location,
            taken: BTreeSet::new(),
        })
    }

    /// Opens one safetensors file (an adapter, say) with the same bookkeeping.
    pub fn open_file(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::invalid(path, "not found"));
        }
        let file = MappedFile::open(path)?;
        let location = file
            .metadata
            .tensors()
            .into_keys()
            .map(|name| (name, 0))
            .collect();
        Ok(Self {
            files: vec![file],
            location,
            taken: BTreeSet::new(),
        })
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Takes tensor `name` as f32 on `device`, checking its shape; each tensor is taken once.
    pub fn take<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, Error> {
        let values = self.take_values(name, shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// [`WeightFiles::take`] as f32 values in host memory (row-major).
    pub fn take_values<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Vec<f32>, Error> {
        let file = self.location.get(name).map(|&i| &self.files[i]);
        let Some(file) = file else {
            return Err(Error::tensor(self.path_of(name), name, "is missing"));
        };
        let info = file
            .metadata
            .info(name)
            .expect("name indexed from this file's header");
        if info.shape != shape {
            return Err(Error::tensor(
                &file.path,
                name,
                format!("has shape {:?}, the model expects {:?}", info.shape, shape),
            ));
        }
        let values = to_f32(info.dtype, file.bytes(info)).map_err(|message| {
            Error::tensor(&file.path, name, format!("cannot be read: {message}"))
        })?;
        if !self.taken.insert(name.to_string()) {
            return Err(Error::tensor(&file.path, name, "taken twice"));
        }
        file.release(info);
        Ok(values)
    }

    /// The file holding tensor `name`, or every file's path when none holds it (for errors).
    pub fn path_of(&self, name: &str) -> PathBuf {
        match self.location.get(name) {
            Some(&i) => self.files[i].path.clone(),
            None => {
                let paths: Vec<String> = self
                    .files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect();
                PathBuf::from(paths.join(", "))
            }
        }
    }

    /// Ends loading: every tensor that the model did not take is an error naming it.
    pub fn finish(self) -> Result<(), Error> {
        let unused: Vec<(&String, usize)> = self
            .location
            .iter()
            .filter(|(name, _)| !self.taken.contains(*name) && !is_known_leftover(name))
            .map(|(name, &file)| (name, file))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some((name, file)) => Err(Error::tensor(
                &self.files[*file].path,
                name,
                format!(
                    "is not used by the model{}",
                    match unused.len() {
                        1 => String::new(),
                        n => format!(" (and {} more unused tensors)", n - 1),
                    }
                ),
            )),
        }
    }
}

/// The shard names listed by an index, and its tensor-to-shard map.
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>), Error> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(path, format!("invalid index: {e}")))?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    for shard in &shards {
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(Error::invalid(
                path,
                format!("shard name `{shard}` is not a plain file name"),
            ));
        }
    }
    let shards = shards.into_iter().cloned().collect();
    Ok((shards, index.weight_map))
}

/// The index must describe the shards as they are: same tensor names, same files.
fn check_index(
    index: &Path,
    declared: &BTreeMap<String, String>,
    files: &[MappedFile],
    location: &BTreeMap<String, usize>,
) -> Result<(), Error> {
    for (name, shard) in declared {
        match location.get(name) {
            Some(&i)
                if files[i]
                    .path
                    .file_name()
                    .is_some_and(|f| f == shard.as_str()) => {}
            Some(&i) => {
                return Err(Error::tensor(
                    index,
                    name,
                    format!(
                        "is listed in {shard} but stored in {}",
                        files[i].path.display()
                    ),
                ));
            }
            None => {
                return Err(Error::tensor(
                    index,
                    name,
                    format!("is listed in {shard} but not stored there"),
                ));
            }
        }
    }
    if let Some(name) = location.keys().find(|name| !declared.contains_key(*name)) {
        return Err(Error::tensor(
            &files[location[name]].path,
            name,
            format!("is not listed in {}", index.display()),
        ));
    }
    Ok(())
}

/// Little-endian f32, bf16 or f16 bytes as f32 values.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let values = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?} is not supported (F32, BF16, F16)")),
    };
    Ok(values)
}
