//! An Ollama `Modelfile` for a base GGUF with an adapter GGUF: `FROM` the base, `ADAPTER` the
//! adapter, the chat template as Ollama's Go template where the model's Jinja template is one
//! of the layouts we know (ChatML, Llama 3), and `PARAMETER stop` for the end-of-turn and EOS
//! tokens. Other templates get no `TEMPLATE` line (Ollama then takes the template stored in
//! the base GGUF, `tokenizer.chat_template`) and a comment saying so.

/// Ollama's Go template for ChatML (`<|im_start|>role ... <|im_end|>`; Qwen, SmolLM), as
/// Ollama's template docs write it: system messages are among `.Messages`, so no `.System`
/// prefix (it would print the system prompt twice).
const CHATML: &str = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

/// Ollama's Go template for Llama 3's header layout (system messages among `.Messages`).
const LLAMA3: &str = "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}\
<|start_header_id|>assistant<|end_header_id|>\n\n";

/// The Modelfile text. `chat_template` is the model's Jinja template, `eos` its EOS token text.
pub fn modelfile(
    base: &str,
    adapter: &str,
    chat_template: Option<&str>,
    eos: Option<&str>,
) -> String {
    let mut text = format!("FROM {base}\nADAPTER {adapter}\n");
    let template = chat_template.unwrap_or_default();
    let (go, turn_end) = if template.contains("<|im_start|>") {
        (Some(CHATML), Some("<|im_end|>"))
    } else if template.contains("<|start_header_id|>") {
        (Some(LLAMA3), Some("<|eot_id|>"))
    } else {
        (None, None)
    };
    match go {
        Some(go) => text.push_str(&format!("TEMPLATE \"\"\"{go}\"\"\"\n")),
        None => text.push_str(
            "# no TEMPLATE: the chat template is not ChatML or Llama 3; Ollama uses the one in FROM's GGUF\n",
        ),
    }
    let mut stops: Vec<&str> = turn_end.into_iter().chain(eos).collect();
    stops.dedup();
    for stop in stops {
        text.push_str(&format!(
            "PARAMETER stop \"{}\"\n",
            stop.replace('"', "\\\"")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_models_get_a_go_template_and_stops() {
        let text = modelfile(
            "base.gguf",
            "adapter.gguf",
            Some("{{'<|im_start|>' + m}}"),
            Some("<|endoftext|>"),
        );
        assert_eq!(
            text,
            format!(
                "FROM base.gguf\nADAPTER adapter.gguf\nTEMPLATE \"\"\"{CHATML}\"\"\"\n\
                 PARAMETER stop \"<|im_end|>\"\nPARAMETER stop \"<|endoftext|>\"\n"
            )
        );
    }

    #[test]
    fn other_templates_are_left_to_the_gguf() {
        let text = modelfile("b.gguf", "a.gguf", Some("[INST]"), Some("</s>"));
        assert_eq!(
            text,
            "FROM b.gguf\nADAPTER a.gguf\n# no TEMPLATE: the chat template is not ChatML or Llama 3; \
             Ollama uses the one in FROM's GGUF\nPARAMETER stop \"</s>\"\n"
        );
        let llama3 = modelfile("b", "a", Some("<|start_header_id|>"), Some("<|eot_id|>"));
        assert!(llama3.ends_with("<|end_header_id|>\n\n\"\"\"\nPARAMETER stop \"<|eot_id|>\"\n"));
    }
}
