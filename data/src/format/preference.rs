//! `preference` records as TRL's `DPOTrainer` (1.16) tokenizes them: a prompt with a chosen
//! and a rejected answer become two examples, prompt + chosen and prompt + rejected, in which
//! only the answer's tokens are scored.
//!
//! - Conversational records (the prompt a list of messages; answers a list of messages or a
//!   text, which becomes one assistant message): the prompt is rendered with the chat template
//!   and the generation prompt, prompt + answer without it; all three are tokenized without
//!   added special tokens (the template writes BOS where the model wants one, so there is never
//!   a second). No EOS is added: the answer ends with what the template writes after it.
//! - Plain records (all three texts): EOS text is appended to each answer that does not end
//!   with it, and prompt, prompt + chosen and prompt + rejected are tokenized with the
//!   tokenizer's special tokens.
//!
//! The prompt's tokens are the longest prefix it shares with both rendered pairs (a token
//! merged across the boundary belongs to the answers); the rest of each is its answer.
//! `overlong = "truncate"` (the default) keeps the first `max_len` tokens of each sequence, as
//! TRL's `keep_start`, and drops a pair whose prompt alone fills `max_len`; `drop` drops any
//! pair with a sequence longer than `max_len`.

use serde_json::Value;

use super::{Built, Example, ExampleBuilder};
use crate::Error;
use crate::config::Overlong;
use crate::source::{Record, json_kind};
use crate::template::Message;

/// The token ids of a pair: the shared prompt and the two answers.
struct PairIds {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
}

impl ExampleBuilder<'_> {
    /// The two examples of a preference record (chosen, then rejected), or none.
    pub(super) fn preference(&self, record: &Record) -> Result<Built, Error> {
        let ids = match self.prompt_column(record)? {
            (key, Value::Array(_)) => self.conversational_pair(record, key)?,
            (_, Value::String(prompt)) => self.plain_pair(record, prompt)?,
            (key, other) => {
                return Err(record.error(format!(
                    "field `{key}` must be a text or a list of messages, found {}",
                    json_kind(other)
                )));
            }
        };
        let max_len = self.config.max_len;
        let longest = ids.prompt.len() + ids.chosen.len().max(ids.rejected.len());
        let mut built = Built::default();
        let drop = match self.config.overlong() {
            Overlong::Drop => longest > max_len,
            _ => ids.prompt.len() >= max_len,
        };
        if drop || ids.chosen.is_empty() || ids.rejected.is_empty() {
            built.dropped = true;
            return Ok(built);
        }
        built.truncated = longest > max_len;
        for answer in [&ids.chosen, &ids.rejected] {
            let mut sequence = ids.prompt.clone();
            sequence.extend(answer);
            let mut trained = vec![false; ids.prompt.len()];
            trained.resize(sequence.len(), true);
            sequence.truncate(max_len);
            trained.truncate(max_len);
            built.examples.push(Example::new(sequence, trained));
        }
        Ok(built)
    }

    /// The prompt's column name and value: the prompt column, or `messages` where the record
    /// has no prompt.
    fn prompt_column<'r>(&'r self, record: &'r Record) -> Result<(&'r str, &'r Value), Error> {
        let columns = &self.config.columns;
        [&columns.prompt, &columns.messages]
            .into_iter()
            .find_map(|key| Some((key.as_str(), record.fields.get(key)?)))
            .ok_or_else(|| {
                record.error(format!(
                    "missing field `{}` (or `{}`)",
                    columns.prompt, columns.messages
                ))
            })
    }

    /// A pair whose prompt, column `key`, is a list of messages, rendered with the chat
    /// template.
    fn conversational_pair(&self, record: &Record, key: &str) -> Result<PairIds, Error> {
        let columns = &self.config.columns;
        let prompt = self.message_list(record, key)?;
        let template = self.template.as_ref().ok_or_else(|| {
            record.error("a prompt of messages needs the model's chat template, and it has none")
        })?;
        let render = |messages: &[Message], generation_prompt: bool| {
            let text = template
                .render(messages, generation_prompt)
                .map_err(|e| record.error(e.to_string()))?;
            self.encode(record, &text, false)
        };
        let with = |column: &str| -> Result<Vec<u32>, Error> {
            let mut messages = prompt.clone();
            messages.extend(self.answer_messages(record, column)?);
            render(&messages, false)
        };
        let prompt_ids = render(&prompt, true)?;
        Ok(split_pair(
            prompt_ids,
            with(&columns.chosen)?,
            with(&columns.rejected)?,
        ))
    }

    /// A pair of texts with the prompt `prompt`, concatenated as TRL does.
    fn plain_pair(&self, record: &Record, prompt: &str) -> Result<PairIds, Error> {
        let columns = &self.config.columns;
        let eos = self
            .tokenizer
            .config()
            .eos_token
            .clone()
            .unwrap_or_default();
        let with = |column: &str| -> Result<Vec<u32>, Error> {
            let answer = record.string(column)?;
            let end = match answer.ends_with(&eos) {
                true => "",
                false => eos.as_str(),
            };
            self.encode(record, &format!("{prompt}{answer}{end}"), true)
        };
        Ok(split_pair(
            self.encode(record, prompt, true)?,
            with(&columns.chosen)?,
            with(&columns.rejected)?,
        ))
    }

    /// An answer column: a list of messages, or a text taken as one assistant message.
    fn answer_messages(&self, record: &Record, column: &str) -> Result<Vec<Message>, Error> {
        match record.fields.get(column) {
            Some(Value::String(text)) => Ok(vec![Message::new("assistant", text.as_str())]),
            _ => self.message_list(record, column),
        }
    }
}

/// Splits the rendered pairs where their shared prefix with the prompt ends.
fn split_pair(prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32>) -> PairIds {
    let shared = |other: &[u32]| prompt.iter().zip(other).take_while(|(a, b)| a == b).count();
    let len = shared(&chosen).min(shared(&rejected));
    PairIds {
        chosen: chosen[len..].to_vec(),
        rejected: rejected[len..].to_vec(),
        prompt: prompt[..len].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_the_prefix_shared_with_both_answers() {
        // The prompt's last token (7) merged with each answer's first: it belongs to the answers.
        let pair = split_pair(vec![1, 2, 7], vec![1, 2, 8, 9], vec![1, 2, 7, 5]);
        assert_eq!(pair.prompt, [1, 2]);
        assert_eq!(pair.chosen, [8, 9]);
        assert_eq!(pair.rejected, [7, 5]);
    }
}
