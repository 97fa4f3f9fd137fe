//! A reader for GGUF files (versions 2 and 3, little-endian): the metadata key/value pairs and
//! the tensor directory, with every offset and size checked against the file before use.
//! Tensor data is memory-mapped and dequantized on request.

pub mod dequant;
pub mod import;
pub mod tokenizer;

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
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("tensor `{name}` is missing")))?;
        Ok(dequantize(info.ty, &self.map[info.range.clone()]))
    }
}

/// A cursor over the file's bytes whose reads fail with a message instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
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

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.count(&format!("length of {what}"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
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
                let n = self.count(&format!("array length of `{key}`"), 1)?;
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

type Parsed = (u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>);

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut cur = Cursor { bytes, pos: 0 };
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
    let tensor_count = cur.count("tensor count", 24)?;
    let kv_count = cur.count("metadata count", 12)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = cur.string("metadata key")?;
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
        let name = cur.string("tensor name")?;
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
