//! DPO against TRL's `DPOTrainer` + PEFT (fixture of `scripts/make_dpo_fixture.py`, TRL
//! 1.16.0): on five pairs in one batch (conversational and plain) with a LoRA adapter whose `B`
//! is not zero, the reference's log-probabilities (adapters off), the policy's, the loss, the
//! rewards and the first step's adapter gradients equal TRL's, for the sigmoid and IPO losses.

mod common;
use common::test_device;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use feinschliff_data::batch::{Batch, make_batch};
use feinschliff_data::config::{DataConfig, Format};
use feinschliff_data::format::{Example, ExampleBuilder};
use feinschliff_data::source::read_records;
use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::peft::load_adapter;
use feinschliff_model::llama::Llama;
use feinschliff_model::weights::WeightFiles;
use feinschliff_train::dpo::loss::{DpoLoss, DpoSettings};
use feinschliff_train::dpo::pass::{dpo_forward_backward, row_log_probs};
use feinschliff_train::pass::backprop::{AdapterGrads, MlpActivations};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpo")
}

fn base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama/tied_gqa")
}

/// The five pairs in one batch: rows chosen 0, rejected 0, chosen 1, …
fn pairs_batch() -> Batch {
    let pairs = fixture().join("pairs.jsonl");
    let mut config = DataConfig::new(pairs.display().to_string());
    config.format = Format::Preference;
    config.max_len = 1024;
    let tokenizer = TextTokenizer::from_model_dir(&base_dir()).unwrap();
    let builder = ExampleBuilder::new(&config, &tokenizer).unwrap();
    let examples: Vec<Example> = read_records(&[pairs])
        .unwrap()
        .iter()
        .flat_map(|r| builder.build(r).unwrap().examples)
        .collect();
    let rows: Vec<Vec<&Example>> = examples.iter().map(|e| vec![e]).collect();
    make_batch(&rows, None, tokenizer.pad_id())
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

/// `chosen` and `rejected` lists of TRL's, interleaved as our rows are.
fn per_row(terms: &Value, chosen: &str, rejected: &str) -> Vec<f64> {
    let list = |key: &str| -> Vec<f64> {
        let values = terms[key].as_array().unwrap();
        values.iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let (c, r) = (list(chosen), list(rejected));
    c.iter().zip(&r).flat_map(|(c, r)| [*c, *r]).collect()
}

fn assert_close(what: &str, ours: &[f64], theirs: &[f64], tol: f64) {
    assert_eq!(ours.len(), theirs.len(), "{what}: count");
    for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what}[{k}]: ours {a} vs TRL {b}"
        );
    }
}

fn model(adapter: bool, device: &Device) -> Llama {
    let mut model = HfModel::load(&base_dir(), device).unwrap().model;
    if adapter {
        load_adapter(&mut model, &fixture().join("adapter"), device).unwrap();
    }
    model
}

#[test]
fn log_probs_loss_rewards_and_gradients_equal_trl() {
    let device = test_device();
    let plain = device.clone().inner();
    let batch = pairs_batch();
    let expected = expected();
    let beta = expected["beta"].as_f64().unwrap();
    let reference = row_log_probs(&model(false, &device), &batch, &plain);
    let policy_model = model(true, &device);
    let policy = row_log_probs(&policy_model, &batch, &plain);
    for (name, loss) in [("sigmoid", DpoLoss::Sigmoid), ("ipo", DpoLoss::Ipo)] {
        let terms = &expected[name];
        let trl_reference = per_row(terms, "reference_chosen_logps", "reference_rejected_logps");
        assert_close(
            "reference log-probabilities",
            &reference,
            &trl_reference,
            1e-4,
        );
        let trl_policy = per_row(terms, "policy_chosen_logps", "policy_rejected_logps");
        assert_close("policy log-probabilities", &policy, &trl_policy, 1e-4);

        let settings = DpoSettings { beta, loss };
        let mut grads = AdapterGrads::default();
        let pairs = batch.rows / 2;
        let result = dpo_forward_backward(
            &policy_model,
            &batch,
            &reference,
            settings,
            1.0 / pairs as f64,
            0,
            MlpActivations::Keep,
            &plain,
            &mut grads,
        );
        let trl_loss = terms["loss"].as_f64().unwrap();
        assert_close(name, &[result.pass.loss], &[trl_loss], 1e-4);
        assert_close(name, &[result.metrics.loss], &[trl_loss], 1e-4);
        let mean = |key: &str| terms[key].as_f64().unwrap();
        let m = &result.metrics;
        assert_close("margin", &[m.reward_margin], &[mean("reward_margin")], 1e-4);
        assert_close(
            "accuracy",
            &[m.reward_accuracy],
            &[mean("reward_accuracy")],
            1e-6,
        );
        check_gradients(name, &policy_model, grads, &plain);
    }
}

/// Our adapter gradients against TRL's (`grads_{name}.safetensors`, PEFT's names), each within
/// 1e-4 of its largest entry.
fn check_gradients(name: &str, model: &Llama, grads: AdapterGrads, device: &Device) {
    let path = fixture().join(format!("grads_{name}.safetensors"));
    let mut theirs = WeightFiles::open_file(&path).unwrap();
    let grads = grads.into_inner();
    let mut checked = 0;
    for (path, adapter) in model.adapters() {
        for (kind, param) in [("lora_A", &adapter.lora_a), ("lora_B", &adapter.lora_b)] {
            let key = format!("base_model.model.{path}.{kind}.weight");
            let ours = &grads.iter().find(|(id, _)| *id == param.id).unwrap().1;
            let trl: Tensor<2> = theirs.take(&key, ours.dims(), device).unwrap();
            let (ours, trl) = (values(ours.clone()), values(trl));
            let largest = trl.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(largest > 0.0, "{key}: a zero gradient tests nothing");
            let worst = ours
                .iter()
                .zip(&trl)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-4 * largest,
                "{name} {key}: differs by {worst} (largest {largest})"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 28, "every adapter of the fixture");
    theirs.finish().unwrap();
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}
