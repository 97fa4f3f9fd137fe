//! Writing GGUF files (version 3, little-endian, data aligned to 32 bytes), the format
//! [`super::GgufFile`] reads: metadata with the exact value types llama.cpp asks for, then the
//! tensor directory, then each tensor's data, produced one tensor at a time so that a model
//! is never held in memory twice. The file is created under a temporary name beside its
//! destination and renamed when complete; an existing file is never replaced.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use feinschliff_data::atomic_file::write_new_file_with;

use super::dequant::GgmlType;
use crate::Error;

/// Alignment of the data section and of every tensor in it (GGUF's default).
const ALIGNMENT: usize = 32;

/// A metadata value with its GGUF type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    Str(String),
    /// `ARRAY` of `STRING`.
    Strs(Vec<String>),
    /// `ARRAY` of `INT32`.
    I32s(Vec<i32>),
    /// `ARRAY` of `FLOAT32`.
    F32s(Vec<f32>),
}

/// One tensor of the directory.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// GGUF name.
    pub name: String,
    /// Row-major (PyTorch) shape; the file stores it reversed.
    pub shape: Vec<usize>,
    /// Storage type.
    pub ty: GgmlType,
}

impl TensorEntry {
    /// Bytes of its data.
    fn byte_len(&self) -> usize {
        let count = self.shape.iter().product::<usize>();
        count / self.ty.block().0 * self.ty.block().1
    }
}

/// Writes a new GGUF file at `path`: `metadata` in order, then `tensors`, whose data
/// `data(i)` returns for tensor `i` (exactly its byte length, or the write fails naming it).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorEntry],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, Error>,
) -> Result<(), Error> {
    write_new_file_with(path, |file: &mut File| {
        let io = |e| Error::io(path, e);
        let mut out = BufWriter::new(file);
        let header = header_bytes(metadata, tensors);
        out.write_all(&header).map_err(io)?;
        let mut written = header.len();
        for (i, tensor) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() != tensor.byte_len() {
                return Err(Error::invalid(
                    path,
                    format!(
                        "tensor `{}`: {} bytes of data, {:?} {:?} takes {}",
                        tensor.name,
                        bytes.len(),
                        tensor.ty,
                        tensor.shape,
                        tensor.byte_len()
                    ),
                ));
            }
            out.write_all(&bytes).map_err(io)?;
            let padding = bytes.len().next_multiple_of(ALIGNMENT) - bytes.len();
            out.write_all(&[0u8; ALIGNMENT][..padding]).map_err(io)?;
            written += bytes.len() + padding;
        }
        out.flush().map_err(io)?;
        debug_assert!(written.is_multiple_of(ALIGNMENT));
        Ok(())
    })
}

/// Magic, version, counts, metadata, tensor directory, and the padding up to the data.
fn header_bytes(metadata: &[(String, MetaValue)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        put_value(&mut out, value);
    }
    let mut offset = 0usize;
    for tensor in tensors {
        put_str(&mut out, &tensor.name);
        out.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
        for &d in tensor.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&tensor.ty.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += tensor.byte_len().next_multiple_of(ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The value's type id and its bytes.
fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
    let array = |out: &mut Vec<u8>, item_type: u32, len: usize| {
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&item_type.to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
    };
    match value {
        MetaValue::U32(v) => put_typed(out, 4, &v.to_le_bytes()),
        MetaValue::I32(v) => put_typed(out, 5, &v.to_le_bytes()),
        MetaValue::F32(v) => put_typed(out, 6, &v.to_le_bytes()),
        MetaValue::Bool(v) => put_typed(out, 7, &[u8::from(*v)]),
        MetaValue::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        MetaValue::Strs(items) => {
            array(out, 8, items.len());
            items.iter().for_each(|s| put_str(out, s));
        }
        MetaValue::I32s(items) => {
            array(out, 5, items.len());
            items
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        MetaValue::F32s(items) => {
            array(out, 6, items.len());
            items
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
    }
}

fn put_typed(out: &mut Vec<u8>, ty: u32, bytes: &[u8]) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::super::{GgufFile, Value};
    use super::*;

    #[test]
    fn our_reader_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let metadata = [
            ("a.u32".to_string(), MetaValue::U32(7)),
            ("a.f32".to_string(), MetaValue::F32(0.5)),
            (
                "a.strs".to_string(),
                MetaValue::Strs(vec!["x".into(), "yz".into()]),
            ),
            ("a.i32s".to_string(), MetaValue::I32s(vec![-1, 3])),
        ];
        let tensors = [
            TensorEntry {
                name: "v".into(),
                shape: vec![3],
                ty: GgmlType::F32,
            },
            TensorEntry {
                name: "m".into(),
                shape: vec![2, 32],
                ty: GgmlType::Q8_0,
            },
        ];
        let q8 = super::super::quantize::quantize(GgmlType::Q8_0, &[1.0; 64], 32).unwrap();
        write_gguf(&path, &metadata, &tensors, |i| {
            Ok([
                [1f32, 2.0, 3.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                q8.clone(),
            ][i]
                .clone())
        })
        .unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.metadata["a.u32"], Value::Uint(7));
        assert_eq!(file.metadata["a.f32"], Value::Float(0.5));
        assert_eq!(
            file.metadata["a.strs"],
            Value::Array(vec![Value::String("x".into()), Value::String("yz".into())])
        );
        assert_eq!(
            file.metadata["a.i32s"],
            Value::Array(vec![Value::Int(-1), Value::Int(3)])
        );
        assert_eq!(file.tensor_f32("v").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(file.tensors["m"].shape(), [2, 32]);
        // 127 · f16(1 / 127)
        assert!(
            file.tensor_f32("m")
                .unwrap()
                .iter()
                .all(|v| (v - 1.0).abs() < 1e-4)
        );
        let again = write_gguf(&path, &metadata, &[], |_| Ok(vec![]));
        assert!(again.unwrap_err().to_string().contains("already exists"));
    }

    #[test]
    fn a_wrong_data_length_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = [TensorEntry {
            name: "v".into(),
            shape: vec![3],
            ty: GgmlType::F32,
        }];
        let error = write_gguf(&path, &[], &tensors, |_| Ok(vec![0; 8])).unwrap_err();
        assert!(
            error.to_string().contains("tensor `v`: 8 bytes of data"),
            "{error}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
