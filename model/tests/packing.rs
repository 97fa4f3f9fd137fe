//! Packing changes nothing but speed: the loss of a packed row (several examples, positions
//! restarting, attention blocked between them, padding at the end) equals the token-weighted
//! mean of the same examples run one by one, and a padded batch gives the same again.

mod common;
use common::test_device;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::batch::make_batch;
use feinschliff_data::format::Example;
use feinschliff_model::batch_tensors::BatchTensors;
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::llama::Llama;
use feinschliff_model::loss::causal_lm_loss_sum;

fn examples() -> Vec<Example> {
    let example = |ids: &[u32], trained_from: usize| Example {
        ids: ids.to_vec(),
        trained: (0..ids.len()).map(|i| i >= trained_from).collect(),
    };
    vec![
        example(&[1, 17, 42, 8, 66, 23, 13, 51, 2], 4),
        example(&[1, 9, 31, 77, 2], 0),
        example(&[5, 60, 12, 88, 40, 3, 2], 2),
    ]
}

/// Summed NLL and trained tokens of one batch.
fn loss_sum(model: &Llama, rows: &[Vec<&Example>], len: usize, device: &Device) -> (f64, usize) {
    let batch = make_batch(rows, Some(len), 0);
    let t = BatchTensors::new(&batch, device);
    let logits = model.forward_segments(t.ids, t.positions, t.segments);
    let sum = causal_lm_loss_sum(logits, t.labels);
    (sum.nll.into_scalar::<f64>(), batch.trained_tokens)
}

#[test]
fn packed_loss_equals_the_token_weighted_mean_of_the_examples_alone() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama/tied_gqa");
    let device = test_device();
    let model = HfModel::load(&dir, &device).unwrap().model;
    let examples = examples();

    // Each example alone, through the plain forward pass (no segments, no padding).
    let (mut nll, mut tokens) = (0.0, 0);
    for example in &examples {
        let len = example.ids.len();
        let ids: Vec<i64> = example.ids.iter().map(|&i| i64::from(i)).collect();
        let labels: Vec<i64> = (0..len)
            .map(|i| match example.trained[i] && i > 0 {
                true => ids[i],
                false => -100,
            })
            .collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
        let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [1, len]), &device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).reshape([1, len]);
        let sum = causal_lm_loss_sum(model.forward(input, positions, None), labels);
        nll += sum.nll.into_scalar::<f64>();
        tokens += sum.tokens.into_scalar::<i64>() as usize;
    }
    let alone = nll / tokens as f64;

    let all: Vec<&Example> = examples.iter().collect();
    let (packed_nll, packed_tokens) = loss_sum(&model, &[all], 24, &device);
    assert_eq!(packed_tokens, tokens);
    let packed = packed_nll / packed_tokens as f64;
    let rows: Vec<Vec<&Example>> = examples.iter().map(|e| vec![e]).collect();
    let (padded_nll, padded_tokens) = loss_sum(&model, &rows, 9, &device);
    let padded = padded_nll / padded_tokens as f64;
    assert!(
        (packed - alone).abs() <= 1e-5 * alone,
        "packed {packed} vs alone {alone}"
    );
    assert!(
        (padded - alone).abs() <= 1e-5 * alone,
        "padded {padded} vs alone {alone}"
    );

    // Without the segments, the examples would see each other: the loss must differ.
    let batch = make_batch(&[examples.iter().collect()], Some(24), 0);
    let t = BatchTensors::new(&batch, &device);
    let leaky = causal_lm_loss_sum(model.forward(t.ids, t.positions, None), t.labels)
        .nll
        .into_scalar::<f64>()
        / tokens as f64;
    assert!(
        (leaky - alone).abs() > 1e-4,
        "attention across examples went unnoticed"
    );
}
