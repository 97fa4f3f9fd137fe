//! The model's own tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the special
//! tokens and BOS policy of `tokenizer_config.json`, as transformers reads them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Error;

/// What `tokenizer_config.json` says about special tokens and the chat template.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// The BOS token's text, if the model has one.
    pub bos_token: Option<String>,
    /// The EOS token's text, if the model has one.
    pub eos_token: Option<String>,
    /// The padding token's text, if the model has one.
    pub pad_token: Option<String>,
    /// `add_bos_token`: whether encoding with special tokens must start with BOS.
    pub add_bos_token: Option<bool>,
    /// The default chat template's source, from `chat_template.jinja` or `chat_template`.
    pub chat_template: Option<String>,
    /// Where the chat template came from, for error messages.
    pub chat_template_path: PathBuf,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json` (and `chat_template.jinja`, which wins where both exist)
    /// from a model directory; a missing file gives an empty config.
    pub fn from_model_dir(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("tokenizer_config.json");
        let mut config = Self {
            chat_template_path: path.clone(),
            ..Self::default()
        };
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| Error::invalid(&path, format!("invalid JSON: {e}")))?;
            let token = |key: &str| token_text(&json, key, &path);
            config.bos_token = token("bos_token")?;
            config.eos_token = token("eos_token")?;
            config.pad_token = token("pad_token")?;
            config.add_bos_token = match json.get("add_bos_token") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(Error::invalid(
                        &path,
                        "key `add_bos_token` must be a boolean",
                    ));
                }
            };
            config.chat_template = default_chat_template(&json, &path)?;
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            config.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
            config.chat_template_path = jinja;
        }
        Ok(config)
    }
}

/// A special token entry: a string, an `AddedToken` object with `content`, or null.
fn token_text(json: &Value, key: &str, path: &Path) -> Result<Option<String>, Error> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::invalid(
                path,
                format!("key `{key}` has no string `content`"),
            )),
        },
        Some(_) => Err(Error::invalid(
            path,
            format!("key `{key}` must be a string"),
        )),
    }
}

/// `chat_template` is either a string or a list of `{name, template}`; the default is the one
/// named `default` (transformers' rule).
fn default_chat_template(json: &Value, path: &Path) -> Result<Option<String>, Error> {
    match json.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .find(|item| item.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|item| item.get("template").and_then(Value::as_str))
            .map(str::to_owned)),
        Some(_) => Err(Error::invalid(
            path,
            "key `chat_template` must be a string or a list",
        )),
    }
}

/// A token's byte range `(start, end)` in the text it came from.
pub type Span = (usize, usize);

/// A model's tokenizer with its special tokens.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    config: TokenizerConfig,
    bos_id: Option<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from a model directory.
    pub fn from_model_dir(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::invalid(
                &path,
                "not found: the model directory has no tokenizer",
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::invalid(&path, format!("cannot load tokenizer: {e}")))?;
        // transformers encodes without the truncation or padding a tokenizer.json may carry.
        inner
            .with_truncation(None)
            .map_err(|e| Error::invalid(&path, e.to_string()))?;
        inner.with_padding(None);
        let config = TokenizerConfig::from_model_dir(dir)?;
        let bos_id = match &config.bos_token {
            Some(token) => Some(inner.token_to_id(token).ok_or_else(|| {
                Error::invalid(
                    dir.join("tokenizer_config.json"),
                    format!(
                        "bos_token `{token}` is not in the vocabulary of {}",
                        path.display()
                    ),
                )
            })?),
            None => None,
        };
        Ok(Self {
            inner,
            path,
            config,
            bos_id,
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's own post-processor runs,
    /// and BOS is put in front where `add_bos_token` asks for it and the post-processor did not.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(true), Some(bos)) =
            (add_special_tokens, self.config.add_bos_token, self.bos_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Token ids of `text` without special tokens added, with each token's byte range in
    /// `text` (special tokens written in the text are recognised).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>), Error> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The id of the EOS token of `tokenizer_config.json`, if it has one in the vocabulary.
    pub fn eos_id(&self) -> Option<u32> {
        self.config
            .eos_token
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The id padding gets: the pad token, else EOS, else 0. Padding is never attended to by
    /// real tokens nor trained, so the choice does not change any result.
    pub fn pad_id(&self) -> u32 {
        self.config
            .pad_token
            .as_deref()
            .and_then(|t| self.token_to_id(t))
            .or_else(|| self.eos_id())
            .unwrap_or(0)
    }

    /// The text of `ids`; special tokens are left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, Error> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a byte-fallback token (`<0xXX>`), whose text depends on the byte
    /// tokens around it.
    pub fn is_byte_token(&self, id: u32) -> bool {
        self.inner
            .id_to_token(id)
            .is_some_and(|t| is_byte_fallback_token(&t))
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The highest token id the tokenizer can give, added tokens included (`None` for an
    /// empty vocabulary).
    pub fn highest_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    /// The `tokenizer.json` it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The special tokens and chat template of `tokenizer_config.json`.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }
}

/// Whether `token` is the text of a byte-fallback token, `<0xXX>` with two hex digits.
pub fn is_byte_fallback_token(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6
        && token.starts_with("<0x")
        && b[5] == b'>'
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}
