//! GGUF exports for llama.cpp and Ollama: a run's base model with its adapter merged (or any
//! Hugging Face model directory) as one GGUF file, and a run's adapter (or a PEFT adapter
//! directory made elsewhere) as llama.cpp's LoRA adapter GGUF with an Ollama `Modelfile`.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::export::load_run_model;
use feinschliff_data::tokenize::TokenizerConfig;
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::io::gguf::adapter::write_adapter_gguf;
use feinschliff_model::io::gguf::dequant::GgmlType;
use feinschliff_model::io::gguf::export::{GgufSummary, write_model_gguf};
use feinschliff_model::io::gguf::file_type::GgufFileType;
use feinschliff_model::io::gguf::modelfile::modelfile;
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::peft::load_adapter;
use feinschliff_model::lora::LoraSpec;

/// Where the model (and its adapter) comes from.
pub enum GgufSource {
    /// Checkpoint `checkpoint` (last, best, step-N) of the run in `run`.
    Run {
        /// The run directory.
        run: PathBuf,
        /// Which checkpoint.
        checkpoint: String,
    },
    /// A Hugging Face model directory, with a PEFT adapter directory where one is given.
    Dirs {
        /// The model directory.
        model: PathBuf,
        /// The adapter directory.
        adapter: Option<PathBuf>,
        /// The backend to load them on.
        device: DeviceChoice,
    },
}

impl GgufSource {
    /// The model with its adapter attached (if any) and the adapter's settings.
    fn load(&self) -> Result<(HfModel, Option<LoraSpec>), Error> {
        match self {
            GgufSource::Run { run, checkpoint } => {
                load_run_model(run, checkpoint).map(|(m, spec)| (m, Some(spec)))
            }
            GgufSource::Dirs {
                model,
                adapter,
                device,
            } => {
                let device = device.device();
                let mut hf = HfModel::load(model, &device)?;
                let spec = match adapter {
                    Some(dir) => Some(load_adapter(&mut hf.model, dir, &device)?),
                    None => None,
                };
                Ok((hf, spec))
            }
        }
    }

    /// `general.name`: the run's or the model directory's name.
    fn name(&self) -> String {
        let path = match self {
            GgufSource::Run { run, .. } => run,
            GgufSource::Dirs { model, .. } => model,
        };
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        canonical
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    }
}

/// Writes the model of `source`, its adapter merged, as the new GGUF file `out`.
pub fn export_gguf(
    source: &GgufSource,
    out: &Path,
    ty: GgufFileType,
) -> Result<GgufSummary, Error> {
    let (hf, _) = source.load()?;
    write_model_gguf(&hf.model, &hf.config, &hf.dir, &source.name(), out, ty)
}

/// What an adapter export wrote.
pub struct AdapterExport {
    /// Tensors with their storage types.
    pub tensors: Vec<(String, GgmlType)>,
    /// Fallbacks and other notes.
    pub notes: Vec<String>,
    /// An Ollama Modelfile using `base_gguf` and the adapter written.
    pub modelfile: String,
}

/// Writes the adapter of `source` as llama.cpp's LoRA adapter GGUF `out`, `A` and `B` in `ty`;
/// `base_gguf` is the base model's GGUF for the Modelfile's `FROM`.
pub fn export_gguf_adapter(
    source: &GgufSource,
    out: &Path,
    ty: GgmlType,
    base_gguf: &str,
) -> Result<AdapterExport, Error> {
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Err(Error::Usage(format!(
            "--type {ty:?}: adapters are written as f32, f16, bf16 or q8_0"
        )));
    }
    let (hf, spec) = source.load()?;
    let spec = spec.ok_or_else(|| Error::Usage("no adapter given (--adapter DIR)".into()))?;
    let summary = write_adapter_gguf(&hf.model, &hf.config, &spec, out, ty)?;
    let tokenizer = TokenizerConfig::from_model_dir(&hf.dir)?;
    let modelfile = modelfile(
        base_gguf,
        &out.display().to_string(),
        tokenizer.chat_template.as_deref(),
        tokenizer.eos_token.as_deref(),
    );
    Ok(AdapterExport {
        tensors: summary.tensors,
        notes: summary.notes,
        modelfile,
    })
}
