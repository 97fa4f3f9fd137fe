//! Our examples against transformers' own: token ids and trained tokens of chat (its
//! `apply_chat_template(..., return_assistant_tokens_mask=True)`), alpaca and text formats, on
//! golden files written by `scripts/make_data_fixtures.py`.
//!
//! The tiny fixture tokenizer runs always; the real SmolLM2 tokenizer needs
//! `scripts/fetch-smollm2.sh` first and runs with `--ignored` (as CI does).

use std::path::{Path, PathBuf};

use feinschliff_data::config::{DataConfig, Format, Overlong};
use feinschliff_data::format::{Example, ExampleBuilder};
use feinschliff_data::source::{Origin, Position, Record};
use feinschliff_data::tokenize::TextTokenizer;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A model directory holding `tokenizer_dir`'s tokenizer with `template` as its chat template.
fn with_template(tokenizer_dir: &Path, template: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tokenizer_dir.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut config: Value = serde_json::from_slice(
        &std::fs::read(tokenizer_dir.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["chat_template"] = json!(template);
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

fn record(fields: Value) -> Record {
    Record {
        fields: fields.as_object().unwrap().clone(),
        origin: Origin {
            path: "golden.jsonl".into(),
            position: Position::Line(1),
        },
    }
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Trained flags from transformers' labels (-100 = not trained) or masks (0 = not trained),
/// without the first token, which no causal model predicts.
fn trained_after_first(values: &Value, untrained: i64) -> Vec<bool> {
    values.as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_i64().unwrap() != untrained)
        .collect()
}

fn build(config: &DataConfig, model_dir: &Path, fields: Value) -> Vec<Example> {
    let tokenizer = TextTokenizer::from_model_dir(model_dir).unwrap();
    let builder = ExampleBuilder::new(config, &tokenizer).unwrap();
    builder.build(&record(fields)).unwrap().examples
}

fn check_golden(tokenizer_dir: &Path, golden_file: &str) {
    let golden: Value = serde_json::from_slice(
        &std::fs::read(root().join("data/tests/fixtures").join(golden_file)).unwrap(),
    )
    .unwrap();
    let mut chat = DataConfig::new("unused.jsonl");
    chat.format = Format::Chat;
    chat.max_len = 100_000;
    let mut checked = 0;
    for case in golden["chat"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut templates = vec![case["template"].as_str().unwrap()];
        // SmolLM2's own template has no generation blocks: the answers are found by rendering
        // prefixes, and must come out the same as transformers marks them in the tagged copy.
        if name.starts_with("smollm2_tagged/") {
            templates.push(golden["smollm2_original_template"].as_str().unwrap());
        }
        for template in templates {
            let model = with_template(tokenizer_dir, template);
            let examples = build(&chat, model.path(), json!({ "messages": case["messages"] }));
            assert_eq!(examples.len(), 1, "{name}");
            assert_eq!(examples[0].ids, ids(&case["input_ids"]), "{name}: ids");
            assert_eq!(
                examples[0].trained[1..],
                trained_after_first(&case["assistant_masks"], 0),
                "{name}: trained tokens"
            );
            checked += 1;
        }
    }
    for case in golden["chat_errors"].as_array().unwrap() {
        let model = with_template(tokenizer_dir, case["template"].as_str().unwrap());
        let tokenizer = TextTokenizer::from_model_dir(model.path()).unwrap();
        let builder = ExampleBuilder::new(&chat, &tokenizer).unwrap();
        let message = builder
            .build(&record(json!({ "messages": case["messages"] })))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("golden.jsonl:1: message 2: role `tool`"),
            "{message}"
        );
    }

    let mut alpaca = DataConfig::new("unused.jsonl");
    alpaca.format = Format::Alpaca;
    alpaca.max_len = 100_000;
    assert_eq!(
        alpaca.alpaca_prompt,
        golden["alpaca_prompt_with_input"].as_str().unwrap()
    );
    assert_eq!(
        alpaca.alpaca_prompt_no_input,
        golden["alpaca_prompt_no_input"].as_str().unwrap()
    );
    for case in golden["alpaca"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let examples = build(&alpaca, tokenizer_dir, case.clone());
        assert_eq!(examples[0].ids, ids(&case["input_ids"]), "{name}: ids");
        assert_eq!(
            examples[0].trained[1..],
            trained_after_first(&case["labels"], -100),
            "{name}: trained tokens"
        );
        checked += 1;
    }

    for case in golden["text"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut text = DataConfig::new("unused.jsonl");
        text.max_len = case["max_len"].as_u64().unwrap() as usize;
        text.stride = case["stride"].as_u64().unwrap() as usize;
        if case["truncate"].as_bool().unwrap() {
            text.overlong = Overlong::Truncate;
        }
        let examples = build(&text, tokenizer_dir, json!({ "text": case["text"] }));
        // A window whose only label is its first token trains nothing: we leave it out.
        let expected: Vec<&Value> = case["windows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| trained_after_first(&w["labels"], -100).contains(&true))
            .collect();
        assert_eq!(examples.len(), expected.len(), "{name}: windows");
        for (example, window) in examples.iter().zip(expected) {
            assert_eq!(example.ids, ids(&window["input_ids"]), "{name}: ids");
            assert_eq!(
                example.trained[1..],
                trained_after_first(&window["labels"], -100),
                "{name}: trained tokens"
            );
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} cases checked");
}

#[test]
fn tiny_tokenizer_matches_transformers() {
    check_golden(
        &root().join("tests/fixtures/llama/tied_gqa"),
        "golden_tiny.json",
    );
}

#[test]
#[ignore = "needs scripts/fetch-smollm2.sh"]
fn smollm2_matches_transformers() {
    check_golden(
        &root().join("checkpoints/base/smollm2-135m-instruct"),
        "golden_smollm2.json",
    );
}

#[test]
fn answers_without_eos_get_one_and_it_is_trained() {
    let tiny = root().join("tests/fixtures/llama/tied_gqa");
    let model = with_template(
        &tiny,
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    );
    let tokenizer = TextTokenizer::from_model_dir(model.path()).unwrap();
    let eos = tokenizer.eos_id().unwrap();
    let mut chat = DataConfig::new("unused.jsonl");
    chat.format = Format::Chat;
    let builder = ExampleBuilder::new(&chat, &tokenizer).unwrap();
    let messages = json!({ "messages": [
        { "role": "user", "content": "a" }, { "role": "assistant", "content": "b" },
        { "role": "user", "content": "c" }, { "role": "assistant", "content": "d" }] });
    let example = builder.build(&record(messages)).unwrap().examples.remove(0);
    let plain = tokenizer
        .encode_with_offsets("user: a\nassistant: b\nuser: c\nassistant: d\n")
        .unwrap()
        .0;
    assert_eq!(example.ids.len(), plain.len() + 2, "one EOS per answer");
    let eos_at: Vec<usize> = (0..example.ids.len())
        .filter(|&i| example.ids[i] == eos)
        .collect();
    assert_eq!(eos_at.len(), 2);
    for &i in &eos_at {
        assert!(example.trained[i], "EOS at {i} is not trained");
        assert!(
            example.trained[i - 1],
            "EOS at {i} does not follow an answer"
        );
    }
}

/// `data.chat_template_kwargs` reach the template. Qwen3's renders a finished conversation's
/// last answer with an empty think block either way; with `enable_thinking = false` that block
/// is part of the generation prompt (transformers' `apply_chat_template(...,
/// enable_thinking=False)`), so it is no longer trained: only the answer itself is.
#[test]
fn chat_template_kwargs_reach_the_template() {
    let template =
        std::fs::read_to_string(root().join("data/tests/fixtures/templates/Qwen-Qwen3-0.6B.jinja"))
            .unwrap();
    let tokenizer_dir = root().join("tests/fixtures/llama/tied_gqa");
    let model = with_template(&tokenizer_dir, &template);
    let mut config = DataConfig::new("unused.jsonl");
    config.format = Format::Chat;
    config.max_len = 100_000;
    let messages = json!({ "messages": [
        { "role": "user", "content": "Frist?" },
        { "role": "assistant", "content": "Ein Monat." },
    ]});
    let thinking = build(&config, model.path(), messages.clone());
    config
        .chat_template_kwargs
        .insert("enable_thinking".into(), json!(false));
    let plain = build(&config, model.path(), messages);
    let tokenizer = TextTokenizer::from_model_dir(model.path()).unwrap();
    let trained_text = |example: &Example| {
        let ids: Vec<u32> = example
            .ids
            .iter()
            .zip(&example.trained)
            .filter_map(|(&id, &trained)| trained.then_some(id))
            .collect();
        tokenizer.decode(&ids, false).unwrap()
    };
    assert_eq!(thinking[0].ids, plain[0].ids, "the same text either way");
    // (The tiny tokenizer's 96 tokens cannot spell `<` and `>`: they are lost in encoding.)
    assert_eq!(
        trained_text(&thinking[0]),
        "think\n\n/think\n\nEin Monat.<|im_end|>"
    );
    assert_eq!(trained_text(&plain[0]), "Ein Monat.<|im_end|>");
}
