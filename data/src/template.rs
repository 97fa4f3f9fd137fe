//! The model's own chat template, rendered through minijinja the way transformers renders it:
//! `trim_blocks` and `lstrip_blocks` on, the variables `messages`, `add_generation_prompt`,
//! `bos_token` and `eos_token`, the function `raise_exception`, and Python string methods.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::DataError;
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

/// A compiled chat template with the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles the default chat template of a tokenizer config; a syntax error names the file.
    pub fn new(config: &TokenizerConfig) -> Result<Self, DataError> {
        let path = &config.chat_template_path;
        let source = config
            .chat_template
            .clone()
            .ok_or_else(|| DataError::invalid(path, "the model has no chat template"))?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| DataError::invalid(path, format!("chat template: {}", one_line(&e))))?;
        Ok(Self {
            env,
            bos_token: config.bos_token.clone().unwrap_or_default(),
            eos_token: config.eos_token.clone().unwrap_or_default(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the model's answer
    /// begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| DataError::Template(one_line(&e)))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| DataError::Template(one_line(&e)))
    }
}

/// `raise_exception(msg)` as transformers defines it for templates.
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// A minijinja error with its cause, on one line.
fn one_line(error: &Error) -> String {
    let mut text = error.to_string();
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
