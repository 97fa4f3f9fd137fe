//! Writing safetensors files tensor by tensor: the header is computed from the shapes first,
//! then each tensor's values are produced, converted and written in turn, so a model is never
//! held in memory twice. Files carry `{"format": "pt"}` metadata, which transformers expects.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::{bf16, f16};

use crate::Error;

/// The dtype a tensor is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit float.
    F32,
    /// bfloat16 (round to nearest even).
    BF16,
    /// IEEE half precision (round to nearest even).
    F16,
}

impl std::str::FromStr for StoreDtype {
    type Err = Error;

    /// `f32`, `bf16` or `f16`.
    fn from_str(name: &str) -> Result<Self, Error> {
        match name {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::BF16),
            "f16" => Ok(Self::F16),
            other => Err(Error::Usage(format!(
                "`{other}` is not one of f32, bf16, f16"
            ))),
        }
    }
}

impl StoreDtype {
    fn name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "F32",
            StoreDtype::BF16 => "BF16",
            StoreDtype::F16 => "F16",
        }
    }

    fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::BF16 | StoreDtype::F16 => 2,
        }
    }

    /// The `torch_dtype` name of this dtype in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::BF16 => "bfloat16",
            StoreDtype::F16 => "float16",
        }
    }

    /// Bytes a tensor of `shape` takes.
    pub fn byte_len(self, shape: &[usize]) -> usize {
        shape.iter().product::<usize>() * self.size()
    }
}

/// Writes `shapes` (tensor name → shape, written in name order) to `path` as `dtype`; `values`
/// is asked for each tensor's f32 values in turn and must return exactly as many as the shape
/// holds.
pub fn write_safetensors(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    dtype: StoreDtype,
    mut values: impl FnMut(&str) -> Result<Vec<f32>, Error>,
) -> Result<(), Error> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let len = dtype.byte_len(shape);
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&header).expect("a JSON map serializes");
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let io = |e| Error::io(path, e);
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (name, shape) in shapes {
        let data = values(name)?;
        let expected = shape.iter().product::<usize>();
        if data.len() != expected {
            return Err(Error::invalid(
                path,
                format!("tensor `{name}`: {} values for shape {shape:?}", data.len()),
            ));
        }
        let bytes: Vec<u8> = match dtype {
            StoreDtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoreDtype::BF16 => data
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            StoreDtype::F16 => data
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        out.write_all(&bytes).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}
