//! Our tokenizer gives the ids transformers gave for the same tokenizer files
//! (`tests/fixtures/llama/tied_gqa/eval_expected.json`, made by `scripts/make_fixtures.py`).

use std::path::Path;

use feinschliff_data::source::read_texts;
use feinschliff_data::tokenize::TextTokenizer;
use serde_json::Value;

#[test]
fn ids_match_transformers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let model = fixtures.join("llama/tied_gqa");
    let tokenizer = TextTokenizer::from_model_dir(&model).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("eval_expected.json")).unwrap())
            .unwrap();
    let ids = |value: &Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let first = &read_texts(&[fixtures.join("eval_sample.jsonl")], "text").unwrap()[0];
    assert_eq!(
        tokenizer.encode(first, true).unwrap(),
        ids(&expected["first_record_ids"])
    );
    let checks = expected["tokenizer_checks"].as_array().unwrap();
    assert!(checks.len() >= 5);
    for check in checks {
        let text = check["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(text, true).unwrap(),
            ids(&check["ids"]),
            "{text:?}"
        );
    }
}
