//! A GGUF file as the base model (`model.path = "model.gguf"`), without importing it first.
//!
//! Its config and tokenizer files are written from its metadata, exactly as `import-gguf`
//! writes them, into a temporary directory that lives as long as the [`ModelFiles`]. Its
//! tensors are read under their Hugging Face names ([`GgufTensors`]): a projection stored in
//! quantized blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) is kept in those blocks,
//! never in f32, with Llama's q/k rows moved back to Hugging Face order block row by block row;
//! every other tensor is dequantized as `import-gguf` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GgufFile;
use super::dequant::GgmlType;
use super::import::GgufModel;
use super::qk_permute::{qk_heads, unpermute_rows};
use crate::Error;
use crate::config::LlamaConfig;
use crate::io::safetensors_out::StoreDtype;
use crate::quant::{BlockFormat, QuantizedMatrix};

/// Whether `path` names a GGUF file (by its extension) rather than a model directory.
pub fn is_gguf(path: &Path) -> bool {
    let gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    gguf && !path.is_dir()
}

/// The directory of a base model's config and tokenizer files: the model directory itself,
/// or, for a GGUF file, a temporary directory written from its metadata and removed when this
/// is dropped.
pub struct ModelFiles {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl ModelFiles {
    /// The files of the model at `path` (a directory or a GGUF file).
    pub fn of(path: &Path) -> Result<Self, Error> {
        match is_gguf(path) {
            true => Self::of_gguf(&GgufModel::read(path, StoreDtype::F32)?),
            false => Ok(Self {
                dir: path.to_path_buf(),
                _temp: None,
            }),
        }
    }

    /// The files of a GGUF model, written into a new temporary directory.
    pub(crate) fn of_gguf(model: &GgufModel) -> Result<Self, Error> {
        let temp = tempfile::Builder::new()
            .prefix("feinschliff-gguf-base-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        model.write_files(temp.path())?;
        Ok(Self {
            dir: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    }

    /// The directory holding `config.json`, `generation_config.json`, `tokenizer.json` and
    /// `tokenizer_config.json`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The tensors of a GGUF file under their Hugging Face names.
pub struct GgufTensors {
    file: GgufFile,
    config: LlamaConfig,
    /// HF name -> GGUF name.
    by_hf: BTreeMap<String, String>,
}

impl GgufTensors {
    /// The tensors of `model`, whose names and shapes [`GgufModel::read`] has checked.
    pub(crate) fn of(model: GgufModel) -> Self {
        let by_hf = model
            .names
            .into_iter()
            .map(|(gguf, (hf, _))| (hf, gguf))
            .collect();
        Self {
            file: model.file,
            config: model.arch.config,
            by_hf,
        }
    }

    /// The GGUF file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The Hugging Face names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_hf.keys()
    }

    /// Whether there is a tensor of HF name `hf`.
    pub fn contains(&self, hf: &str) -> bool {
        self.by_hf.contains_key(hf)
    }

    /// The row-major shape of tensor `hf`, if there is one.
    pub fn shape(&self, hf: &str) -> Option<Vec<usize>> {
        let gguf = self.by_hf.get(hf)?;
        self.file.tensors.get(gguf).map(|info| info.shape())
    }

    /// Tensor `hf` dequantized to f32, rows in Hugging Face order.
    pub fn values(&self, hf: &str) -> Result<Vec<f32>, Error> {
        let gguf = self.gguf_name(hf)?;
        let values = self.file.tensor_f32(gguf)?;
        let rows = self.file.tensors[gguf].shape()[0];
        self.file.release(gguf);
        Ok(match qk_heads(&self.config, hf) {
            Some(heads) => unpermute_rows(&values, rows, heads),
            None => values,
        })
    }

    /// Matrix `hf` in the quantized blocks it is stored in, rows in Hugging Face order; `None`
    /// for a tensor stored as F32, F16 or BF16, or not 2-D.
    pub fn blocks(&self, hf: &str) -> Result<Option<QuantizedMatrix>, Error> {
        let gguf = self.gguf_name(hf)?;
        let (info, bytes) = self.file.tensor_bytes(gguf)?;
        let dense = matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let &[rows, cols] = info.shape().as_slice() else {
            return Ok(None);
        };
        if dense {
            return Ok(None);
        }
        let blocks = match qk_heads(&self.config, hf) {
            Some(heads) => unpermute_rows(bytes, rows, heads),
            None => bytes.to_vec(),
        };
        self.file.release(gguf);
        QuantizedMatrix::from_blocks(BlockFormat::Ggml(info.ty), [rows, cols], blocks)
            .map(Some)
            .map_err(|message| Error::tensor(self.path(), gguf, message))
    }

    fn gguf_name(&self, hf: &str) -> Result<&String, Error> {
        self.by_hf
            .get(hf)
            .ok_or_else(|| Error::tensor(self.path(), hf, "is missing"))
    }
}
