//! The model's own chat template, rendered through minijinja the way transformers renders it:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, the variables `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and `documents` (none unless set),
//! any extra variables set with [`ChatTemplate::set_variable`] (transformers' template kwargs, e.g.
//! Qwen3's `enable_thinking` or Llama 3's `date_string`), the functions `raise_exception` and
//! `strftime_now`, transformers' `tojson`, Python string methods, maps in their insertion order
//! and `{{ true }}`, `{{ none }}` written as Jinja2 writes them (`True`, `None`).
//!
//! For training, [`ChatTemplate::render_answers`] also says where each assistant answer lies
//! in the text. Templates with `{% generation %}…{% endgeneration %}` blocks mark the answers
//! themselves (transformers' `return_assistant_tokens_mask`); each block becomes a filter block
//! that wraps its output in two marker characters, so whitespace control works exactly as for
//! any block tag. Templates without them (most, SmolLM2's included) are rendered once per
//! assistant turn: the conversation up to the turn with the generation prompt, then with the
//! turn; the answer is what the second adds to the first, without trailing whitespace (so
//! `content<|im_end|>` of `content<|im_end|>\n`, as a generation block would mark it). Where a
//! template renders a conversation's beginning differently once more follows (Qwen3 drops the
//! reasoning of earlier turns, Mistral Nemo moves the system message to the last user turn),
//! this is refused with an error that asks for generation blocks.

mod strftime;
mod tojson;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use minijinja::value::{ValueKind, merge_maps};
use minijinja::{Environment, ErrorKind, Output, State, Value};
use serde::Serialize;

use crate::Error;
use crate::tokenize::TokenizerConfig;

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message from `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Template instructions one rendering may execute: a conversation of thousands of turns takes
/// well under a million; a template that loops without end (nested `range`s) stops here, after
/// a second or two, instead of hanging the process.
const FUEL: u64 = 50_000_000;
/// Bytes one rendering may produce: far beyond any conversation a model can take, small enough
/// that a template multiplying its output cannot exhaust memory.
const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A compiled chat template with the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (`tokenizer_config.json`, `chat_template.jinja`, a GGUF).
    path: PathBuf,
    has_generation_blocks: bool,
    bos_token: String,
    eos_token: String,
    variables: BTreeMap<String, Value>,
}

const TEMPLATE_NAME: &str = "chat_template";
/// Marks where a `{% generation %}` block starts and ends in rendered text (Unicode
/// noncharacters, which no text may carry).
const ANSWER_START: char = '\u{FDD0}';
const ANSWER_END: char = '\u{FDD1}';

impl ChatTemplate {
    /// Compiles the default chat template of a tokenizer config; a syntax error names the file.
    pub fn new(config: &TokenizerConfig) -> Result<Self, Error> {
        let path = &config.chat_template_path;
        let source = config
            .chat_template
            .clone()
            .ok_or_else(|| Error::invalid(path, "the model has no chat template"))?;
        let mut env = environment();
        let (source, has_generation_blocks) = generation_blocks_as_filters(&source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| Error::invalid(path, format!("chat template: {}", one_line(&e))))?;
        Ok(Self {
            env,
            path: path.clone(),
            has_generation_blocks,
            bos_token: config.bos_token.clone().unwrap_or_default(),
            eos_token: config.eos_token.clone().unwrap_or_default(),
            variables: BTreeMap::new(),
        })
    }

    /// Sets a variable for every rendering, as a keyword argument of transformers'
    /// `apply_chat_template` does (`enable_thinking`, `date_string`, `tools`, ...); it takes
    /// precedence over `bos_token`, `eos_token`, `tools` and `documents`, not over `messages` and
    /// `add_generation_prompt`. Maps keep their order only where `value` has one (a
    /// [`minijinja::Value`] parsed from JSON does; a `serde_json::Value` sorts its keys).
    pub fn set_variable(&mut self, name: impl Into<String>, value: impl Serialize) {
        self.variables
            .insert(name.into(), Value::from_serialize(value));
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the model's answer
    /// begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let text = self.render_marked(messages, add_generation_prompt)?;
        Ok(text.replace([ANSWER_START, ANSWER_END], ""))
    }

    /// Renders a whole conversation for training and returns the byte ranges of the assistant
    /// answers in it, in order (see the module docs for how they are found).
    pub fn render_answers(
        &self,
        messages: &[Message],
    ) -> Result<(String, Vec<Range<usize>>), Error> {
        if messages
            .iter()
            .any(|m| m.content.contains([ANSWER_START, ANSWER_END]))
        {
            return Err(Error::Template(
                "a message contains the Unicode noncharacter U+FDD0 or U+FDD1".into(),
            ));
        }
        let marked = self.render_marked(messages, false)?;
        if self.has_generation_blocks {
            return Ok(split_markers(&marked));
        }
        let text = marked;
        let mut answers = Vec::new();
        for (turn, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..turn], true)?;
            let with = self.render(&messages[..=turn], false)?;
            if !text.starts_with(&before) || !with.starts_with(&before) || !text.starts_with(&with)
            {
                return Err(Error::Template(format!(
                    "the template does not render the conversation up to message {} as a prefix of the whole conversation, so the answers cannot be located; add {{% generation %}}…{{% endgeneration %}} around the assistant answers",
                    turn + 1
                )));
            }
            let end = before.len() + with[before.len()..].trim_end().len();
            answers.push(before.len()..end);
        }
        Ok((text, answers))
    }

    /// The rendered text with the answer markers of generation blocks still in it.
    fn render_marked(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(one_line(&e)))?;
        // the last map with a key wins
        let context = merge_maps([
            minijinja::context! {
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                tools => (),
                documents => (),
            },
            Value::from(self.variables.clone()),
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
            },
        ]);
        let mut out = CappedOutput(Vec::new());
        match template.render_captured_to(context, &mut out) {
            Ok(_) => String::from_utf8(out.0).map_err(|e| Error::Template(e.to_string())),
            Err(e) if is_too_expensive(&e) => Err(Error::invalid(
                &self.path,
                format!(
                    "chat template is too expensive to render (more than {FUEL} instructions or {} MiB of text): {}",
                    MAX_RENDERED_BYTES >> 20,
                    one_line(&e)
                ),
            )),
            Err(e) => Err(Error::Template(one_line(&e))),
        }
    }
}

/// An environment with transformers' settings, globals and filters (see the module docs).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime::strftime_now);
    env.add_filter("tojson", tojson::tojson);
    env.add_filter("feinschliff_answer", |body: String| {
        format!("{ANSWER_START}{body}{ANSWER_END}")
    });
    env.set_formatter(python_str);
    env
}

/// `{{ value }}` as Jinja2 writes it where minijinja would not: booleans as `True` and `False`,
/// none as `None`.
fn python_str(out: &mut Output, state: &State, value: &Value) -> Result<(), minijinja::Error> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text).map_err(minijinja::Error::from)
}

/// Rendered output that refuses to grow past [`MAX_RENDERED_BYTES`].
struct CappedOutput(Vec<u8>);

impl std::io::Write for CappedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether rendering stopped at the fuel or output limit.
fn is_too_expensive(error: &minijinja::Error) -> bool {
    matches!(error.kind(), ErrorKind::OutOfFuel | ErrorKind::WriteFailure)
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any `-` whitespace control) into a
/// filter block that marks its output; says whether there were any.
fn generation_blocks_as_filters(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..close];
        let (left, body) = match inner.strip_prefix('-') {
            Some(body) => ("-", body),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix('-') {
            Some(body) => (body, "-"),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("filter feinschliff_answer"),
            "endgeneration" => Some("endfilter"),
            _ => None,
        };
        match replacement {
            Some(new) => {
                found = true;
                out.push_str(&format!("{{%{left} {new} {right}%}}"));
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    (out, found)
}

/// Removes the answer markers from `marked`, returning the text and the answers' byte ranges.
fn split_markers(marked: &str) -> (String, Vec<Range<usize>>) {
    let mut text = String::with_capacity(marked.len());
    let mut answers = Vec::new();
    let mut start = None;
    for c in marked.chars() {
        match c {
            ANSWER_START => start = Some(text.len()),
            ANSWER_END => {
                if let Some(s) = start.take() {
                    answers.push(s..text.len());
                }
            }
            c => text.push(c),
        }
    }
    (text, answers)
}

/// `raise_exception(msg)` as transformers defines it for templates.
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// A minijinja error with its cause, on one line, naming the template line rather than
/// minijinja's internal template name.
fn one_line(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let Some(line) = error.line() {
        text = text.replace(
            &format!("(in {TEMPLATE_NAME}:{line})"),
            &format!("(template line {line})"),
        );
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(template: &str) -> TokenizerConfig {
        TokenizerConfig {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            chat_template: Some(template.into()),
            chat_template_path: "tokenizer_config.json".into(),
            ..TokenizerConfig::default()
        }
    }

    #[test]
    fn renders_with_transformers_whitespace_rules() {
        let template = ChatTemplate::new(&config(
            "{{ bos_token }}{% for m in messages %}\n  {{ m.role }}: {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}",
        ))
        .unwrap();
        let text = template
            .render(&[Message::new("user", " Hallo ")], true)
            .unwrap();
        assert_eq!(text, "<s>  user: Hallo</s>\nassistant:");
    }

    #[test]
    fn answers_from_generation_blocks_and_from_prefixes_agree() {
        let plain = "{% for m in messages %}<{{ m.role }}>\n{{ m.content }}</s>\n{% endfor %}{% if add_generation_prompt %}<assistant>\n{% endif %}";
        let tagged = "{% for m in messages %}<{{ m.role }}>\n{% if m.role == 'assistant' %}   {%- generation %}{{ m.content }}</s>{% endgeneration %}{{ '\\n' }}{% else %}{{ m.content }}</s>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>\n{% endif %}";
        let messages = [
            Message::new("user", "Frage"),
            Message::new("assistant", "Antwort\n"),
            Message::new("user", "Noch eine"),
            Message::new("assistant", "Zweite"),
        ];
        let (text, answers) = ChatTemplate::new(&config(plain))
            .unwrap()
            .render_answers(&messages)
            .unwrap();
        let (tagged_text, tagged_answers) = ChatTemplate::new(&config(tagged))
            .unwrap()
            .render_answers(&messages)
            .unwrap();
        assert_eq!(text, tagged_text);
        let spans: Vec<&str> = answers.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(spans, ["Antwort\n</s>", "Zweite</s>"]);
        assert_eq!(answers, tagged_answers);
    }

    #[test]
    fn jinja2_features_render_as_in_transformers() {
        let source = "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}|{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|{{ ' <a> '.strip() }}{{ 'ab'.startswith('a') }}|{{ tools }}{{ documents is none }}{{ enable_thinking is defined }}";
        let template = ChatTemplate::new(&config(source)).unwrap();
        let text = template.render(&[Message::new("user", "x")], false);
        // render_jinja_template([[{"role": "user", "content": "x"}]], chat_template=source)
        assert_eq!(text.unwrap(), "02|1|<a>True|NoneTrueFalse");
    }

    #[test]
    fn variables_are_seen_and_override_all_but_the_conversation() {
        let source = "{{ bos_token }}|{{ tools | tojson }}|{{ enable_thinking }}|{{ messages | length }}|{{ add_generation_prompt }}";
        let mut template = ChatTemplate::new(&config(source)).unwrap();
        template.set_variable("bos_token", "<B>");
        template.set_variable("tools", [serde_json::json!({"name": "f"})]);
        template.set_variable("enable_thinking", false);
        template.set_variable("messages", ["ignored"; 3]);
        template.set_variable("add_generation_prompt", true);
        let text = template.render(&[Message::new("user", "x")], false);
        assert_eq!(text.unwrap(), "<B>|[{\"name\": \"f\"}]|False|1|False");
    }

    #[test]
    fn templates_that_loop_or_grow_without_end_are_stopped_and_named() {
        let nested =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let line = "x".repeat(64);
        let growing = format!(
            "{{% for a in range(100000) %}}{{% for b in range(1000) %}}{line}{{% endfor %}}{{% endfor %}}"
        );
        for source in [nested, growing.as_str()] {
            let started = std::time::Instant::now();
            let template = ChatTemplate::new(&config(source)).unwrap();
            let message = template.render(&[], false).unwrap_err().to_string();
            assert!(message.starts_with("tokenizer_config.json: "), "{message}");
            assert!(message.contains("too expensive"), "{message}");
            assert!(
                started.elapsed().as_secs() < 10,
                "took {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let template = ChatTemplate::new(&config("{{ raise_exception('only user') }}")).unwrap();
        let message = template.render(&[], false).unwrap_err().to_string();
        assert!(message.contains("only user"), "{message}");
        let message = ChatTemplate::new(&config("{% for %}"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with("tokenizer_config.json: chat template:"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }
}
