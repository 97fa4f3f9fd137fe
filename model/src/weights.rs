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

use burn::tensor::{DType, Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::Error;
use crate::io::gguf::base::GgufTensors;
use crate::product::in_dtype;
use crate::quant::QuantizedMatrix;

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

    /// Drops the pages of `info`'s bytes once read; see [`release_pages`].
    fn release(&self, info: &TensorInfo) {
        let (start, end) = info.data_offsets;
        release_pages(&self.map, self.data_start + start..self.data_start + end);
    }
}

/// Drops the pages of `range` of a read-only file map from the process's resident memory once
/// they have been read: a file-backed page stays resident (and counts in RSS) while mapped, so
/// loading an 8B checkpoint would otherwise hold all of its 16 GB of file pages until the end.
/// The caller holds no borrowed slice of these bytes.
#[cfg_attr(not(unix), allow(unused_variables))]
pub(crate) fn release_pages(map: &Mmap, range: std::ops::Range<usize>) {
    // SAFETY: the map is a read-only shared mapping of a file: MADV_DONTNEED only drops its
    // pages from this process (whole pages, so parts of a header or a neighbouring tensor may
    // go too), and a later read faults them in again from the file, with the same contents.
    // A failure (an old kernel) only keeps the pages resident.
    #[cfg(unix)]
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
    };
}

/// The checkpoint's tensors, handed out by name.
pub struct WeightFiles {
    source: Source,
    taken: BTreeSet<String>,
}

/// Where the tensors are.
enum Source {
    /// Safetensors files, with tensor name -> index into `files`.
    Safetensors {
        files: Vec<MappedFile>,
        location: BTreeMap<String, usize>,
    },
    /// A GGUF file, read under Hugging Face names.
    Gguf(Box<GgufTensors>),
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
        Ok(Self::of(Source::Safetensors { files, location }))
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
        Ok(Self::of(Source::Safetensors {
            files: vec![file],
            location,
        }))
    }

    /// The tensors of a GGUF file, under their Hugging Face names.
    pub fn gguf(tensors: GgufTensors) -> Self {
        Self::of(Source::Gguf(Box::new(tensors)))
    }

    fn of(source: Source) -> Self {
        Self {
            source,
            taken: BTreeSet::new(),
        }
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors { location, .. } => location.contains_key(name),
            Source::Gguf(tensors) => tensors.contains(name),
        }
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

    /// [`WeightFiles::take`] in `dtype`: a tensor stored in bf16 and wanted in bf16 is copied
    /// as stored, without an f32 temporary of twice its size (an 8B model's embedding and head
    /// are 1 GB each in bf16).
    pub fn take_as<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor<D>, Error> {
        if dtype == DType::BF16
            && let Some(values) = self.take_stored_bf16(name, &shape)?
        {
            let data = TensorData::new(values, shape);
            return Ok(Tensor::from_data(data, (device, DType::BF16)));
        }
        Ok(in_dtype(self.take(name, shape, device)?, dtype))
    }

    /// Tensor `name` as its bf16 values, when a safetensors file stores it in bf16; `None`
    /// (the tensor not taken) otherwise.
    fn take_stored_bf16(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<Vec<half::bf16>>, Error> {
        let Source::Safetensors { files, location } = &self.source else {
            return Ok(None);
        };
        let Some(file) = location.get(name).map(|&i| &files[i]) else {
            return Ok(None);
        };
        let info = file.metadata.info(name).expect("indexed from this header");
        if info.dtype != Dtype::BF16 {
            return Ok(None);
        }
        self.check_shape(name, shape)?;
        let values = file
            .bytes(info)
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
            .collect();
        file.release(info);
        self.mark_taken(name)?;
        Ok(Some(values))
    }

    /// [`WeightFiles::take`] as f32 values in host memory (row-major).
    pub fn take_values<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Vec<f32>, Error> {
        self.check_shape(name, &shape)?;
        let values = match &self.source {
            Source::Safetensors { files, location } => {
                let file = &files[location[name]];
                let info = file.metadata.info(name).expect("indexed from this header");
                let values = to_f32(info.dtype, file.bytes(info)).map_err(|message| {
                    Error::tensor(&file.path, name, format!("cannot be read: {message}"))
                })?;
                file.release(info);
                values
            }
            Source::Gguf(tensors) => tensors.values(name)?,
        };
        self.mark_taken(name)?;
        Ok(values)
    }

    /// Takes matrix `name` as the quantized blocks it is stored in, when it is (a GGUF file's
    /// Q8_0, Q4_K, ... tensors); `None`, leaving it to [`WeightFiles::take_values`], when it
    /// is stored dense.
    pub fn take_blocks(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<QuantizedMatrix>, Error> {
        let Source::Gguf(tensors) = &self.source else {
            return Ok(None);
        };
        self.check_shape(name, &shape)?;
        let Some(matrix) = tensors.blocks(name)? else {
            return Ok(None);
        };
        self.mark_taken(name)?;
        Ok(Some(matrix))
    }

    /// An error unless the checkpoint holds `name` in `shape`.
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), Error> {
        let stored = match &self.source {
            Source::Safetensors { files, location } => location.get(name).map(|&i| {
                let info = files[i].metadata.info(name).expect("indexed");
                info.shape.clone()
            }),
            Source::Gguf(tensors) => tensors.shape(name),
        };
        match stored {
            None => Err(Error::tensor(self.path_of(name), name, "is missing")),
            Some(stored) if stored != shape => Err(Error::tensor(
                self.path_of(name),
                name,
                format!("has shape {stored:?}, the model expects {shape:?}"),
            )),
            Some(_) => Ok(()),
        }
    }

    fn mark_taken(&mut self, name: &str) -> Result<(), Error> {
        match self.taken.insert(name.to_string()) {
            true => Ok(()),
            false => Err(Error::tensor(self.path_of(name), name, "taken twice")),
        }
    }

    /// The file holding tensor `name`, or every file's path when none holds it (for errors).
    pub fn path_of(&self, name: &str) -> PathBuf {
        match &self.source {
            Source::Gguf(tensors) => tensors.path().to_path_buf(),
            Source::Safetensors { files, location } => match location.get(name) {
                Some(&i) => files[i].path.clone(),
                None => {
                    let paths: Vec<String> =
                        files.iter().map(|f| f.path.display().to_string()).collect();
                    PathBuf::from(paths.join(", "))
                }
            },
        }
    }

    /// Ends loading: every tensor that the model did not take is an error naming it.
    pub fn finish(self) -> Result<(), Error> {
        let names: Vec<&String> = match &self.source {
            Source::Safetensors { location, .. } => location.keys().collect(),
            Source::Gguf(tensors) => tensors.names().collect(),
        };
        let unused: Vec<&String> = names
            .into_iter()
            .filter(|name| !self.taken.contains(*name) && !is_known_leftover(name))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(name) => Err(Error::tensor(
                self.path_of(name),
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
