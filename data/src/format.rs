//! From records to tokenized examples: which tokens an example has and which of them are
//! trained, for the three formats.
//!
//! - `text`: the document with the tokenizer's own special tokens (its BOS policy), then EOS;
//!   every token is trained. A long document becomes windows of `max_len` that move by
//!   `stride`; a token trained in one window is context only in the next (Hugging Face's
//!   strided-perplexity recipe), so no token is trained twice.
//! - `alpaca`: the prompt (with the tokenizer's special tokens) then the output and EOS, each
//!   tokenized on its own; the output and EOS are trained (`train_on = "all"`: everything).
//! - `chat`: the conversation rendered with the model's chat template and tokenized without
//!   added special tokens (the template writes BOS if the model wants one, so there is never a
//!   second); the assistant answers, end-of-turn token included, are trained. When an answer
//!   holds no EOS token, EOS is inserted after it and trained, so the model learns to stop.
//!
//! - `preference`: a prompt with a chosen and a rejected answer, as TRL's `DPOTrainer`
//!   tokenizes them ([`preference`]): two examples, each scoring its answer only.
//!
//! Examples longer than `max_len` are windowed (text), truncated or dropped as `overlong`
//! says; an example left with nothing to train is dropped.

use crate::Error;
use crate::config::{DataConfig, Format, KNOWN_ROLES, Overlong, TrainOn};
use crate::source::{Record, json_kind};
use crate::template::{ChatTemplate, Message};
use crate::tokenize::TextTokenizer;

mod preference;

/// A tokenized example: its token ids and, for each, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `trained[i]`: token `i` is predicted and scored (never the first token, which nothing
    /// predicts).
    pub trained: Vec<bool>,
}

impl Example {
    /// The number of scored tokens.
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().skip(1).filter(|t| **t).count()
    }

    fn new(ids: Vec<u32>, mut trained: Vec<bool>) -> Self {
        if let Some(first) = trained.first_mut() {
            *first = false;
        }
        Self { ids, trained }
    }
}

/// What became of one record.
#[derive(Debug, Clone, Default)]
pub struct Built {
    /// Its examples (several windows of a long text, none when dropped).
    pub examples: Vec<Example>,
    /// It was longer than `max_len` and cut.
    pub truncated: bool,
    /// It was left out (too long, or nothing to train).
    pub dropped: bool,
}

/// Turns records into examples as the `[data]` configuration says.
pub struct ExampleBuilder<'a> {
    config: &'a DataConfig,
    tokenizer: &'a TextTokenizer,
    template: Option<ChatTemplate>,
    eos: u32,
}

impl<'a> ExampleBuilder<'a> {
    /// A builder for `config` with the model's tokenizer (and chat template for `chat`).
    pub fn new(config: &'a DataConfig, tokenizer: &'a TextTokenizer) -> Result<Self, Error> {
        let eos = tokenizer.eos_id().ok_or_else(|| {
            Error::invalid(
                &tokenizer.config().chat_template_path,
                "the tokenizer names no EOS token (`eos_token`) in its vocabulary; examples must end with one",
            )
        })?;
        // Plain-text preference pairs need no template; conversational ones say so if missing.
        let no_template = tokenizer.config().chat_template.is_none();
        let template = match config.format {
            Format::Preference if no_template => None,
            Format::Chat | Format::Preference => {
                let mut template = ChatTemplate::new(tokenizer.config())?;
                for (name, value) in &config.chat_template_kwargs {
                    template.set_variable(name.clone(), value);
                }
                Some(template)
            }
            Format::Text | Format::Alpaca => None,
        };
        Ok(Self {
            config,
            tokenizer,
            template,
            eos,
        })
    }

    /// The examples of one record.
    pub fn build(&self, record: &Record) -> Result<Built, Error> {
        let example = match self.config.format {
            Format::Text => self.text(record)?,
            Format::Alpaca => self.alpaca(record)?,
            Format::Chat => self.chat(record)?,
            Format::Preference => return self.preference(record),
        };
        let max_len = self.config.max_len;
        let mut built = Built::default();
        if example.ids.len() <= max_len {
            built.examples.push(example);
        } else {
            match self.config.overlong() {
                // `overlong()` has resolved `auto` already.
                Overlong::Drop | Overlong::Auto => built.dropped = true,
                Overlong::Truncate => {
                    built.truncated = true;
                    built.examples.push(Example::new(
                        example.ids[..max_len].to_vec(),
                        example.trained[..max_len].to_vec(),
                    ));
                }
                Overlong::Window => {
                    built.truncated = true;
                    built.examples = windows(&example, max_len, self.config.stride());
                }
            }
        }
        built.examples.retain(|e| e.trained_tokens() > 0);
        if built.examples.is_empty() {
            built.dropped = true;
        }
        Ok(built)
    }

    fn text(&self, record: &Record) -> Result<Example, Error> {
        let text = record.string(&self.config.columns.text)?;
        let mut ids = self.encode(record, text, true)?;
        ids.push(self.eos);
        let trained = vec![true; ids.len()];
        Ok(Example::new(ids, trained))
    }

    fn alpaca(&self, record: &Record) -> Result<Example, Error> {
        let columns = &self.config.columns;
        let instruction = record.string(&columns.instruction)?;
        let input = match record.fields.get(&columns.input) {
            None | Some(serde_json::Value::Null) => "",
            Some(_) => record.string(&columns.input)?,
        };
        let output = record.string(&columns.output)?;
        let prompt = match input.is_empty() {
            true => fill(
                &self.config.alpaca_prompt_no_input,
                &[("{instruction}", instruction)],
            ),
            false => fill(
                &self.config.alpaca_prompt,
                &[("{instruction}", instruction), ("{input}", input)],
            ),
        };
        let mut ids = self.encode(record, &prompt, true)?;
        let all = self.config.train_on == TrainOn::All;
        let mut trained = vec![all; ids.len()];
        let answer = self.encode(record, output, false)?;
        trained.resize(ids.len() + answer.len() + 1, true);
        ids.extend(answer);
        ids.push(self.eos);
        Ok(Example::new(ids, trained))
    }

    fn chat(&self, record: &Record) -> Result<Example, Error> {
        let messages = self.messages(record)?;
        let template = self.template.as_ref().expect("chat has a template");
        let (text, answers) = template
            .render_answers(&messages)
            .map_err(|e| record.error(e.to_string()))?;
        let (mut ids, offsets) = self
            .tokenizer
            .encode_with_offsets(&text)
            .map_err(|e| record.error(e.to_string()))?;
        let overlaps = |(start, end): (usize, usize), span: &std::ops::Range<usize>| {
            start < end && start < span.end && end > span.start
        };
        let selected: &[std::ops::Range<usize>] = match self.config.train_on {
            TrainOn::Completion => &answers,
            TrainOn::LastAssistant => &answers[answers.len().saturating_sub(1)..],
            TrainOn::All => &[],
        };
        let mut trained: Vec<bool> = offsets
            .iter()
            .map(|&o| {
                self.config.train_on == TrainOn::All || selected.iter().any(|s| overlaps(o, s))
            })
            .collect();
        // Every answer must end in EOS, or the model never learns to stop.
        for span in answers.iter().rev() {
            // Answers are visited last to first, so insertions never shift the tokens of the
            // answers still to visit.
            let inside: Vec<usize> = (0..offsets.len())
                .filter(|&t| overlaps(offsets[t], span))
                .collect();
            let Some(&last) = inside.last() else {
                continue;
            };
            if !inside.iter().any(|&t| ids[t] == self.eos) {
                let is_trained = trained[last];
                ids.insert(last + 1, self.eos);
                trained.insert(last + 1, is_trained);
            }
        }
        Ok(Example::new(ids, trained))
    }

    /// The record's conversation, roles mapped; it must hold an assistant message to train on
    /// (unless every token is trained).
    fn messages(&self, record: &Record) -> Result<Vec<Message>, Error> {
        let messages = self.message_list(record, &self.config.columns.messages)?;
        if self.config.train_on != TrainOn::All && !messages.iter().any(|m| m.role == "assistant") {
            return Err(record.error("the conversation has no assistant message to train on"));
        }
        Ok(messages)
    }

    /// The messages of column `key`, roles mapped; a role outside system/user/assistant is an
    /// error.
    fn message_list(&self, record: &Record, key: &str) -> Result<Vec<Message>, Error> {
        let columns = &self.config.columns;
        let list = match record.fields.get(key) {
            Some(serde_json::Value::Array(list)) => list,
            Some(other) => {
                return Err(record.error(format!(
                    "field `{key}` must be a list of messages, found {}",
                    json_kind(other)
                )));
            }
            None => return Err(record.error(format!("missing field `{key}`"))),
        };
        let mut messages = Vec::with_capacity(list.len());
        for (index, item) in list.iter().enumerate() {
            let n = index + 1;
            let text = |field: &str| match item.get(field) {
                Some(serde_json::Value::String(s)) => Ok(s.as_str()),
                Some(other) => Err(record.error(format!(
                    "message {n}: field `{field}` must be a string, found {}",
                    json_kind(other)
                ))),
                None => Err(record.error(format!("message {n}: missing field `{field}`"))),
            };
            let role = text(&columns.role)?;
            let role = self.config.roles.get(role).map_or(role, String::as_str);
            if !KNOWN_ROLES.contains(&role) {
                return Err(record.error(format!(
                    "message {n}: role `{role}` is not one of {}; map it with data.roles (e.g. roles = {{ {role} = \"assistant\" }})",
                    KNOWN_ROLES.join(", ")
                )));
            }
            messages.push(Message::new(role, text(&columns.content)?));
        }
        Ok(messages)
    }

    fn encode(&self, record: &Record, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        self.tokenizer
            .encode(text, special)
            .map_err(|e| record.error(e.to_string()))
    }
}

/// `template` with each placeholder replaced, in one pass (a value containing a placeholder is
/// left as it is).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (key, value) in values {
            if let Some(tail) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = tail;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Windows of `max_len` tokens moving by `stride` over a long example; a token trained in an
/// earlier window is context only in later ones.
fn windows(example: &Example, max_len: usize, stride: usize) -> Vec<Example> {
    let n = example.ids.len();
    let mut out = Vec::new();
    let mut previous_end = 0;
    let mut begin = 0;
    while begin < n {
        let end = (begin + max_len).min(n);
        let trained = (begin..end)
            .map(|i| i >= previous_end && example.trained[i])
            .collect();
        out.push(Example::new(example.ids[begin..end].to_vec(), trained));
        previous_end = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_in_one_pass() {
        assert_eq!(
            fill(
                "I: {instruction} / {input}",
                &[("{instruction}", "say {input}"), ("{input}", "x")]
            ),
            "I: say {input} / x"
        );
    }

    #[test]
    fn windows_train_each_token_once() {
        let example = Example::new((0..10).collect(), vec![true; 10]);
        let w = windows(&example, 4, 3);
        let starts: Vec<u32> = w.iter().map(|e| e.ids[0]).collect();
        assert_eq!(starts, [0, 3, 6]);
        assert_eq!(w[1].trained, [false, true, true, true]);
        assert_eq!(w[2].ids, [6, 7, 8, 9]);
        assert_eq!(w[2].trained, [false, true, true, true]);
        let trained: usize = w.iter().map(Example::trained_tokens).sum();
        assert_eq!(trained, 9, "every token but the very first, once");
    }
}
