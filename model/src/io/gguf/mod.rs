//! A reader for GGUF files (versions 2 and 3, little-endian): the metadata key/value pairs and
//! the tensor directory, with every offset and size checked against the file before use.
//! Tensor data is memory-mapped and dequantized on request.

pub mod adapter;
pub mod base;
pub mod dequant;
pub mod export;
pub mod file_type;
pub mod import;
pub mod k_quants;
pub mod modelfile;
pub mod names;
pub mod qk_permute;
pub mod quantize;
pub mod rope_freqs;
pub mod tokenizer;
pub mod vocab;
pub mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::Error;
use dequant::{GgmlType, dequantize};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays may hold arrays; deeper nesting than this is taken as corruption.
const MAX_ARRAY_DEPTH: usize = 8;
/// The memory the parsed header (metadata and tensor directory) may take, estimated while it is
/// read: `size_of::<Value>()` per array element, a string's bytes plus [`STRING_OVERHEAD`], and
/// [`ENTRY_BYTES`] per metadata entry or tensor. A Llama 3 vocabulary (128k tokens, 280k merges)
/// takes about 30 MiB; more than this limit is refused, so that no file, however large or
/// hostile, makes the reader hold more than about twice this much (the heap plus the file
/// pages read, which are fewer bytes than charged).
pub const MAX_HEADER_BYTES: usize = 256 << 20;
/// Longest metadata key or tensor name (the GGUF specification's limit for keys).
const MAX_NAME_BYTES: usize = 65_535;
/// Charged per string on top of its bytes (allocator overhead).
const STRING_OVERHEAD: usize = 16;
/// Charged per metadata entry and per tensor (map node, key, directory record).
const ENTRY_BYTES: usize = 256;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

/// Where one tensor is and how it is stored.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions in GGUF order: `dims[0]` varies fastest (the columns).
    pub dims: Vec<usize>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte range in the file.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl GgufFile {
    /// Opens and validates a GGUF file; errors name the file and what is wrong.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map, alive as long as `self`; see `weights.rs`.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (version, metadata, tensors) =
            parse(&map).map_err(|message| Error::invalid(path, message))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor `name` dequantized to f32, in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        let (info, bytes) = self.tensor_bytes(name)?;
        Ok(dequantize(info.ty, bytes))
    }

    /// Drops the pages of tensor `name`'s bytes from resident memory once they have been read
    /// (see [`crate::weights::release_pages`]).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.tensors.get(name) {
            crate::weights::release_pages(&self.map, info.range.clone());
        }
    }

    /// Tensor `name` as stored: its directory entry and its bytes.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), Error> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("tensor `{name}` is missing")))?;
        Ok((info, &self.map[info.range.clone()]))
    }
}

/// A cursor over the file's bytes whose reads fail with a message instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// What is left of [`MAX_HEADER_BYTES`].
    budget: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} at byte {} runs past the end of the file ({} bytes)",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length or count, which must fit in what is left of the file (each item takes at
    /// least `min_item_bytes`), so a corrupt header cannot make us allocate terabytes.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes as u64) > left {
            return Err(format!(
                "truncated or corrupt: {what} {n} is larger than the rest of the file allows"
            ));
        }
        Ok(n as usize)
    }

    /// Charges `bytes` of memory to the header's budget; `what` names the culprit.
    fn charge(&mut self, bytes: usize, what: &str) -> Result<(), String> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            format!(
                "{what}: the metadata and tensor directory would take more than {} MiB of memory \
                 (the limit); the file is corrupt or not a model",
                MAX_HEADER_BYTES >> 20
            )
        })?;
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.count(&format!("length of {what}"), 1)?;
        self.charge(len.saturating_add(STRING_OVERHEAD), what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A metadata key or tensor name: short, without control characters, so that an error
    /// naming it stays one line.
    fn name(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let name = self.string(what)?;
        if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(format!(
                "{what} at byte {at} is longer than {MAX_NAME_BYTES} bytes or holds control characters"
            ));
        }
        Ok(name)
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, String> {
        let what = &format!("value of `{key}`");
        Ok(match ty {
            0 => Value::Uint(self.u8(what)? as u64),
            1 => Value::Int(self.u8(what)? as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2")) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2")) as i64),
            4 => Value::Uint(self.u32(what)? as u64),
            5 => Value::Int(self.u32(what)? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32(what)?) as f64),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::String(self.string(what)?),
            9 if depth < MAX_ARRAY_DEPTH => {
                let item_ty = self.u32(what)?;
                let item_bytes = file_bytes(item_ty)
                    .ok_or_else(|| format!("metadata `{key}` has unknown value type {item_ty}"))?;
                let n = self.count(&format!("array length of `{key}`"), item_bytes)?;
                let what = format!("metadata `{key}` ({n} values)");
                self.charge(n.saturating_mul(size_of::<Value>()), &what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64(what)?),
            11 => Value::Int(self.u64(what)? as i64),
            12 => Value::Float(f64::from_bits(self.u64(what)?)),
            9 => {
                return Err(format!(
                    "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                ));
            }
            other => return Err(format!("metadata `{key}` has unknown value type {other}")),
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file (a string its length, an array its
/// item type and count), or `None` for an unknown type.
fn file_bytes(ty: u32) -> Option<usize> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

type Parsed = (u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>);

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut cur = Cursor {
        bytes,
        pos: 0,
        budget: MAX_HEADER_BYTES,
    };
    let magic = cur.take(4, "magic")?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
        ));
    }
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    // A tensor record takes at least 32 bytes (name length, one dimension, type, offset), a
    // metadata entry 13 (key length, type, one byte of value).
    let tensor_count = cur.count("tensor count", 32)?;
    let kv_count = cur.count("metadata count", 13)?;
    cur.charge(
        tensor_count
            .saturating_add(kv_count)
            .saturating_mul(ENTRY_BYTES),
        &format!("{tensor_count} tensors and {kv_count} metadata entries"),
    )?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = cur.name("metadata key")?;
        let ty = cur.u32(&format!("type of `{key}`"))?;
        let value = cur.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::Uint(a)) if *a > 0 && a.is_power_of_two() => *a,
        Some(other) => {
            return Err(format!(
                "`general.alignment` must be a power of two, got {other:?}"
            ));
        }
    };
    let mut raw = Vec::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = cur.name("tensor name")?;
        let n_dims = cur.u32(&format!("dimension count of `{name}`"))? as usize;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(cur.u64(&format!("dimensions of `{name}`"))?);
        }
        let ty = cur.u32(&format!("type of `{name}`"))?;
        let offset = cur.u64(&format!("offset of `{name}`"))?;
        raw.push((name, dims, ty, offset));
    }
    let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = BTreeMap::new();
    for (name, dims, ty, offset) in raw {
        let bad = |message: String| format!("tensor `{name}`: {message}");
        let ty = GgmlType::from_id(ty).map_err(bad)?;
        let count =
            dims.iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&c| c <= usize::MAX as u64 / 4)
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))? as usize;
        if !(dims[0] as usize).is_multiple_of(ty.block().0) {
            return Err(bad(format!(
                "row length {} is not a multiple of the {ty:?} block size {}",
                dims[0],
                ty.block().0
            )));
        }
        let len = ty.byte_len(count).map_err(bad)?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not aligned to {alignment}"
            )));
        }
        let start = data_start
            .checked_add(offset)
            .filter(|&s| s <= bytes.len() as u64);
        let end = start
            .and_then(|s| s.checked_add(len as u64))
            .filter(|&e| e <= bytes.len() as u64);
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad(format!(
                "data ({len} bytes at offset {offset}) lies outside the file ({} bytes): truncated?",
                bytes.len()
            )));
        };
        let info = TensorInfo {
            dims: dims.iter().map(|&d| d as usize).collect(),
            ty,
            range: start as usize..end as usize,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    Ok((version, metadata, tensors))
}
