//! Preference records tokenized as TRL's `DPOTrainer` (1.16.0) tokenizes them: prompt, chosen
//! and rejected ids, and which tokens are scored, on the golden pairs of
//! `train/tests/fixtures/dpo/` (written by `scripts/make_dpo_fixture.py`): conversational
//! records with and without a system message, and plain-text ones, one of which merges the
//! prompt's last token into the answers.

use std::path::{Path, PathBuf};

use feinschliff_data::config::{DataConfig, Format, Overlong};
use feinschliff_data::format::{Built, ExampleBuilder};
use feinschliff_data::source::read_records;
use feinschliff_data::tokenize::TextTokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ids(value: &Value) -> Vec<u32> {
    let list = value.as_array().unwrap();
    list.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Each golden pair built with `max_len` and `overlong`.
fn build_pairs(max_len: usize, overlong: Overlong) -> Vec<Built> {
    let pairs = root().join("train/tests/fixtures/dpo/pairs.jsonl");
    build(
        &pairs,
        &root().join("tests/fixtures/llama/tied_gqa"),
        max_len,
        overlong,
    )
}

/// The pairs of `file` with the tokenizer of `model_dir`.
fn build(file: &Path, model_dir: &Path, max_len: usize, overlong: Overlong) -> Vec<Built> {
    let mut config = DataConfig::new(file.display().to_string());
    config.format = Format::Preference;
    config.max_len = max_len;
    config.overlong = overlong;
    config.validate().unwrap();
    let tokenizer = TextTokenizer::from_model_dir(model_dir).unwrap();
    let builder = ExampleBuilder::new(&config, &tokenizer).unwrap();
    let records = read_records(&[file.to_path_buf()]).unwrap();
    records.iter().map(|r| builder.build(r).unwrap()).collect()
}

/// The `records` of a golden file.
fn golden_records(path: &Path) -> Vec<Value> {
    let expected: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    expected["records"].as_array().unwrap().clone()
}

fn golden() -> Vec<Value> {
    golden_records(&root().join("train/tests/fixtures/dpo/expected.json"))
}

#[test]
fn pairs_tokenize_and_score_as_trl_does() {
    let golden = golden();
    let kinds: Vec<bool> = golden.iter().map(|g| g["conversational"] == true).collect();
    assert!(
        kinds.contains(&true) && kinds.contains(&false),
        "both kinds"
    );
    assert_same_as_trl(&build_pairs(1024, Overlong::Auto), &golden);
}

/// The whole bundled sample with SmolLM2's own tokenizer and chat template against TRL's
/// (`scripts/make_preference_golden.py`); needs `scripts/fetch-smollm2.sh`.
#[test]
#[ignore = "needs SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh)"]
fn the_bundled_sample_tokenizes_as_trl_does_with_smollm2() {
    let model = root().join("checkpoints/base/smollm2-135m-instruct");
    let sample = root().join("data/samples/buergernah-preference.jsonl");
    let golden = golden_records(&root().join("data/tests/fixtures/golden_preference_smollm2.json"));
    assert_eq!(golden.len(), 170);
    assert_same_as_trl(&build(&sample, &model, 100_000, Overlong::Auto), &golden);
}

/// Each built pair is TRL's: prompt + answer ids, only the answer scored.
fn assert_same_as_trl(built: &[Built], golden: &[Value]) {
    assert_eq!(built.len(), golden.len());
    for (k, (built, expected)) in built.iter().zip(golden).enumerate() {
        let prompt = ids(&expected["prompt_ids"]);
        assert_eq!(built.examples.len(), 2, "record {k}: chosen and rejected");
        for (example, key) in built.examples.iter().zip(["chosen_ids", "rejected_ids"]) {
            let answer = ids(&expected[key]);
            let mut sequence = prompt.clone();
            sequence.extend(&answer);
            assert_eq!(example.ids, sequence, "record {k}: {key} sequence");
            let scored: Vec<bool> = (0..sequence.len()).map(|t| t >= prompt.len()).collect();
            assert_eq!(example.trained, scored, "record {k}: {key} scored tokens");
            assert_eq!(example.trained_tokens(), answer.len(), "record {k}");
        }
    }
}

#[test]
fn long_pairs_keep_their_start_or_are_dropped() {
    let golden = golden();
    // The shortest prompt has 10 tokens: at 12, short prompts keep 2 answer tokens and long
    // prompts (which fill 12 tokens) drop their pair, as TRL's keep_start does.
    let built = build_pairs(12, Overlong::Auto);
    for (built, expected) in built.iter().zip(&golden) {
        let prompt = ids(&expected["prompt_ids"]);
        match prompt.len() >= 12 {
            true => assert!(built.dropped && built.examples.is_empty()),
            false => {
                assert!(built.truncated && !built.dropped);
                for example in &built.examples {
                    assert_eq!(example.ids.len(), 12);
                    assert_eq!(example.ids[..prompt.len()], prompt[..]);
                }
            }
        }
    }
    // overlong = "drop": a pair with a sequence over max_len goes, the others stay whole.
    let mut kinds = Vec::new();
    for (built, expected) in build_pairs(30, Overlong::Drop).iter().zip(&golden) {
        let answers = ids(&expected["chosen_ids"])
            .len()
            .max(ids(&expected["rejected_ids"]).len());
        let too_long = ids(&expected["prompt_ids"]).len() + answers > 30;
        assert_eq!(built.dropped, too_long);
        assert!(!built.truncated);
        kinds.push(too_long);
    }
    assert!(
        kinds.contains(&true) && kinds.contains(&false),
        "both cases"
    );
}
