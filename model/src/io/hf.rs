//! A Hugging Face model directory: `config.json`, `generation_config.json`, the safetensors
//! checkpoint and the tokenizer files.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use feinschliff_data::dataset::Loaded;
use feinschliff_data::tokenize::TextTokenizer;
use serde::Deserialize;

use crate::Error;
use crate::config::{LlamaConfig, TokenIds};
use crate::io::gguf::base::{GgufTensors, ModelFiles, is_gguf};
use crate::io::gguf::import::GgufModel;
use crate::io::safetensors_out::StoreDtype;
use crate::json::parse_json;
use crate::linear::BaseStorage;
use crate::llama::Llama;
use crate::weights::WeightFiles;

/// A loaded model with what generation needs to know about it.
pub struct HfModel {
    /// The directory of its config and tokenizer files: the model directory, or for a GGUF
    /// file a temporary one that lives as long as this model.
    pub dir: PathBuf,
    /// What `dir` is made of (a GGUF file's temporary directory, removed when dropped).
    pub files: ModelFiles,
    /// The architecture.
    pub config: LlamaConfig,
    /// The frozen base model.
    pub model: Llama,
    /// Ids that end generation: `generation_config.json`'s, else `config.json`'s.
    pub eos_token_ids: Vec<u32>,
}

impl HfModel {
    /// Loads config and weights from `dir` onto `device` (f32). Every model tensor must be in
    /// the checkpoint with the right shape, and every checkpoint tensor must be used.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, Error> {
        Self::load_as(dir, BaseStorage::default(), device)
    }

    /// [`HfModel::load`] with the frozen matrices kept as `storage` says (dtype, quantization),
    /// each converted as it is read. `path` is a model directory or a GGUF file, whose
    /// quantized projections keep their blocks ([`crate::io::gguf::base`]).
    pub fn load_as(path: &Path, storage: BaseStorage, device: &Device) -> Result<Self, Error> {
        let (files, weights) = match is_gguf(path) {
            true => {
                let gguf = GgufModel::read(path, StoreDtype::F32)?;
                let files = ModelFiles::of_gguf(&gguf)?;
                (files, WeightFiles::gguf(GgufTensors::of(gguf)))
            }
            false if !path.is_dir() => {
                return Err(Error::invalid(
                    path,
                    "not a model directory (nor a .gguf file)",
                ));
            }
            false => (ModelFiles::of(path)?, WeightFiles::open(path)?),
        };
        Self::load_from(files, weights, storage, device)
    }

    /// The model of config and tokenizer `files` and checkpoint `weights`.
    fn load_from(
        files: ModelFiles,
        mut weights: WeightFiles,
        storage: BaseStorage,
        device: &Device,
    ) -> Result<Self, Error> {
        let dir = files.dir().to_path_buf();
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::invalid(&config_path, "not found"));
        }
        let config = LlamaConfig::from_file(&config_path)?;
        let model = Llama::load(&config, &mut weights, storage, device)?;
        weights.finish()?;
        crate::memory::release_freed();
        let eos_token_ids = match generation_eos_ids(&dir)? {
            Some(ids) => ids,
            None => config.eos_token_ids.clone(),
        };
        Ok(Self {
            dir,
            files,
            config,
            model,
            eos_token_ids,
        })
    }

    /// Refuses a tokenizer that can give ids the model has no embedding row for (one with more
    /// tokens than `vocab_size`), naming both sizes.
    pub fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<(), Error> {
        self.check_highest_id(
            tokenizer.path(),
            "the tokenizer gives",
            tokenizer.highest_id(),
        )
    }

    /// Refuses prepared examples (tokenized, or read back from the token cache) holding an id
    /// the model has no embedding row for, naming the cache file and both sizes.
    pub fn check_examples(&self, data: &Loaded) -> Result<(), Error> {
        let examples = data.data.train.iter().chain(&data.data.valid);
        let highest = examples.flat_map(|e| e.ids.iter().copied()).max();
        match (&data.cache_file, data.from_cache) {
            (Some(cache), true) => self.check_highest_id(
                cache,
                "the cached examples (from another model, or damaged: delete the file) hold",
                highest,
            ),
            _ => self.check_highest_id(
                &self.dir.join("tokenizer.json"),
                "the examples hold",
                highest,
            ),
        }
    }

    /// The one check behind both: ids up to `highest` from `source` must be below
    /// `vocab_size`, else Burn's embedding lookup (or a host kernel) would index past the
    /// table mid-run.
    fn check_highest_id(
        &self,
        source: &Path,
        what: &str,
        highest: Option<u32>,
    ) -> Result<(), Error> {
        let vocab_size = self.config.vocab_size;
        match highest {
            Some(id) if id as usize >= vocab_size => Err(Error::invalid(
                source,
                format!(
                    "{what} token ids up to {id} (a vocabulary of {}), but the model's vocab_size is {vocab_size} ({})",
                    id as usize + 1,
                    self.dir.join("config.json").display()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The `eos_token_id` (int or list) of `generation_config.json`, if the file names one.
fn generation_eos_ids(dir: &Path) -> Result<Option<Vec<u32>>, Error> {
    #[derive(Deserialize)]
    struct GenerationConfig {
        eos_token_id: Option<TokenIds>,
    }
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let config: GenerationConfig =
        parse_json(&text).map_err(|message| Error::invalid(&path, message))?;
    Ok(config.eos_token_id.map(TokenIds::into_vec))
}
