//! The `[data]` section of a run configuration: where the records are, how they become
//! examples, which tokens are trained, and how examples are batched. Every key has a default
//! (documented on its field) except `train`; an unknown key is an error naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training data: a file or glob, or a list of them; `.jsonl`, `.json` (an array of
    /// records), `.parquet` or `.csv` (required).
    pub train: Files,
    /// Validation data, as `train`; none = no separate validation files (default).
    #[serde(default)]
    pub valid: Files,
    /// Fraction of the training records held out for validation, chosen by a hash of
    /// `split_key`, so the split never changes between runs (default 0).
    #[serde(default)]
    pub valid_fraction: f64,
    /// The column whose value decides the split; `""` = the whole record (default `""`).
    #[serde(default)]
    pub split_key: String,
    /// `text` (raw documents), `alpaca` (instruction / input / output) or `chat` (messages
    /// rendered with the model's chat template) (default `text`).
    #[serde(default)]
    pub format: Format,
    /// Column names of the records (defaults: the usual names).
    #[serde(default)]
    pub columns: Columns,
    /// Role names mapped to `system` / `user` / `assistant`, e.g. ShareGPT's
    /// `{ human = "user", gpt = "assistant" }` (default none: roles are taken as they are).
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// Tokens per example or packed row (default 512).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// `text` format: how far each window of a long document moves; tokens already trained in
    /// the window before are context only; 0 = `max_len`, no overlap (default 0).
    #[serde(default)]
    pub stride: usize,
    /// What happens to an example longer than `max_len`: `window` (text only: windows of
    /// `stride`), `truncate` (cut at `max_len`), `drop`, or `auto`: `window` for text, `drop`
    /// for alpaca and chat, whose cut answers would never learn to stop (default `auto`).
    #[serde(default)]
    pub overlong: Overlong,
    /// Which tokens are trained: `completion` (answers: alpaca outputs, every assistant turn),
    /// `last_assistant` (only the last assistant turn) or `all` (every token) (default
    /// `completion`; text trains every token either way).
    #[serde(default)]
    pub train_on: TrainOn,
    /// Pack whole examples into rows of exactly `max_len` tokens, attention blocked between
    /// them; otherwise each example is a row, padded per micro-batch (default false).
    #[serde(default)]
    pub packing: bool,
    /// Alpaca prompt for records with a non-empty input; `{instruction}` and `{input}` are
    /// replaced (default: Stanford Alpaca's).
    #[serde(default = "default_alpaca_prompt")]
    pub alpaca_prompt: String,
    /// Alpaca prompt for records without input; `{instruction}` is replaced (default: Stanford
    /// Alpaca's).
    #[serde(default = "default_alpaca_prompt_no_input")]
    pub alpaca_prompt_no_input: String,
    /// Directory of the token cache; `""` = no cache (default `checkpoints/token-cache`).
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
    /// Extra variables of the chat template, as transformers' `apply_chat_template(**kwargs)`
    /// passes them, e.g. `{ enable_thinking = false }` for Qwen3 or `{ date_string = "26 Jul
    /// 2024" }` for Llama 3.x (default none).
    #[serde(default)]
    pub chat_template_kwargs: BTreeMap<String, serde_json::Value>,
}

/// One or more files or glob patterns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(from = "OneOrMany", into = "Vec<String>")]
pub struct Files(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Files {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(s) if s.is_empty() => Files(Vec::new()),
            OneOrMany::One(s) => Files(vec![s]),
            OneOrMany::Many(v) => Files(v),
        }
    }
}

impl From<Files> for Vec<String> {
    fn from(files: Files) -> Self {
        files.0
    }
}

/// How records become examples.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A raw document per record.
    #[default]
    Text,
    /// Instruction, optional input, output.
    Alpaca,
    /// A list of role/content messages.
    Chat,
    /// A prompt (text or messages) with a preferred (`chosen`) and a dispreferred (`rejected`)
    /// answer, for preference tuning; each record gives two examples, chosen then rejected.
    Preference,
}

/// What happens to examples longer than `max_len`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// `Window` for text, `Drop` for alpaca and chat.
    #[default]
    Auto,
    /// Overlapping or adjacent windows (text only).
    Window,
    /// Keep the first `max_len` tokens.
    Truncate,
    /// Leave the example out.
    Drop,
}

/// Which tokens are trained.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Answers only.
    #[default]
    Completion,
    /// Only the last assistant turn of a chat.
    LastAssistant,
    /// Every token.
    All,
}

/// Column names of the records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    /// `text` format: the document (default `text`).
    pub text: String,
    /// `chat` format: the list of messages (default `messages`; ShareGPT: `conversations`).
    pub messages: String,
    /// `chat` format: the role key of a message (default `role`; ShareGPT: `from`).
    pub role: String,
    /// `chat` format: the content key of a message (default `content`; ShareGPT: `value`).
    pub content: String,
    /// `alpaca` format: the instruction (default `instruction`).
    pub instruction: String,
    /// `alpaca` format: the optional input; a missing column counts as empty (default `input`).
    pub input: String,
    /// `alpaca` format: the answer (default `output`).
    pub output: String,
    /// `preference` format: the prompt, a text or a list of messages (default `prompt`; when
    /// the record has none, the `messages` column is the prompt).
    pub prompt: String,
    /// `preference` format: the preferred answer, a text or a list of messages (default
    /// `chosen`).
    pub chosen: String,
    /// `preference` format: the dispreferred answer, like `chosen` (default `rejected`).
    pub rejected: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            messages: "messages".into(),
            role: "role".into(),
            content: "content".into(),
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
            prompt: "prompt".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        }
    }
}

fn default_max_len() -> usize {
    512
}
fn default_cache_dir() -> String {
    "checkpoints/token-cache".into()
}
fn default_alpaca_prompt() -> String {
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n".into()
}
fn default_alpaca_prompt_no_input() -> String {
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n".into()
}

/// The roles a chat message may have after `roles` mapping.
pub const KNOWN_ROLES: [&str; 3] = ["system", "user", "assistant"];

impl DataConfig {
    /// A configuration with every default and `train` as the training data.
    pub fn new(train: impl Into<String>) -> Self {
        serde_json::from_value(serde_json::json!({ "train": train.into() })).expect("defaults")
    }

    /// The window step of long text documents.
    pub fn stride(&self) -> usize {
        match self.stride {
            0 => self.max_len,
            s => s,
        }
    }

    /// What happens to overlong examples (`auto` resolved for the format).
    pub fn overlong(&self) -> Overlong {
        match (self.overlong, self.format) {
            (Overlong::Auto, Format::Text) => Overlong::Window,
            (Overlong::Auto, Format::Alpaca | Format::Chat) => Overlong::Drop,
            (Overlong::Auto, Format::Preference) => Overlong::Truncate,
            (chosen, _) => chosen,
        }
    }

    /// Rejects values that cannot work, naming the key (`data.…`).
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |key: &str, why: String| Err(Error::config(format!("data.{key}"), why));
        if self.train.0.is_empty() || self.train.0.iter().any(String::is_empty) {
            return fail("train", "must name at least one data file".into());
        }
        if self.valid.0.iter().any(String::is_empty) {
            return fail("valid", "names an empty path".into());
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return fail(
                "valid_fraction",
                format!("must be in [0, 1), got {}", self.valid_fraction),
            );
        }
        if self.max_len < 2 {
            return fail(
                "max_len",
                format!("must be at least 2, got {}", self.max_len),
            );
        }
        if self.stride > self.max_len {
            return fail(
                "stride",
                format!(
                    "must not exceed data.max_len ({}), got {}",
                    self.max_len, self.stride
                ),
            );
        }
        if self.overlong == Overlong::Window && self.format != Format::Text {
            return fail(
                "overlong",
                "`window` works for the text format only; use `truncate` or `drop`".into(),
            );
        }
        if self.format == Format::Preference && self.packing {
            return fail(
                "packing",
                "a preference pair is scored row by row; packing does not apply to format `preference`".into(),
            );
        }
        for (from, to) in &self.roles {
            if !KNOWN_ROLES.contains(&to.as_str()) {
                return fail(
                    &format!("roles.{from}"),
                    format!("maps to `{to}`; must be one of {}", KNOWN_ROLES.join(", ")),
                );
            }
        }
        if self.format == Format::Alpaca {
            for (key, prompt, needs) in [
                (
                    "alpaca_prompt",
                    &self.alpaca_prompt,
                    &["{instruction}", "{input}"][..],
                ),
                (
                    "alpaca_prompt_no_input",
                    &self.alpaca_prompt_no_input,
                    &["{instruction}"][..],
                ),
            ] {
                if let Some(missing) = needs.iter().find(|n| !prompt.contains(**n)) {
                    return fail(key, format!("must contain `{missing}`"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DataConfig, String> {
        let config: DataConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn one_file_or_many_and_defaults() {
        let one = parse("train = \"a.jsonl\"").unwrap();
        assert_eq!(one.train.0, ["a.jsonl"]);
        assert!(one.valid.0.is_empty());
        assert_eq!(one.overlong(), Overlong::Window);
        assert_eq!(one.stride(), 512);
        let many = parse("train = [\"a/*.parquet\", \"b.csv\"]\nformat = \"chat\"").unwrap();
        assert_eq!(many.train.0.len(), 2);
        assert_eq!(many.overlong(), Overlong::Drop);
        assert_eq!(DataConfig::new("a.jsonl"), one);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("train = []", "data.train"),
            ("train = \"a\"\nmax_len = 0", "data.max_len"),
            ("train = \"a\"\nvalid_fraction = 1.5", "data.valid_fraction"),
            ("train = \"a\"\nstride = 600", "data.stride"),
            (
                "train = \"a\"\nformat = \"chat\"\noverlong = \"window\"",
                "data.overlong",
            ),
            ("train = \"a\"\nroles = { gpt = \"bot\" }", "data.roles.gpt"),
            (
                "train = \"a\"\nformat = \"alpaca\"\nalpaca_prompt = \"x\"",
                "data.alpaca_prompt",
            ),
        ] {
            let message = parse(text).unwrap_err();
            assert!(message.contains(key), "{text}: {message}");
        }
        assert!(
            parse("train = \"a\"\ncolumns = { txt = \"x\" }")
                .unwrap_err()
                .contains("txt")
        );
    }
}
