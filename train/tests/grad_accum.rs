//! Gradient accumulation on the fixture model, through `train_step` with the micro-batches
//! `step_batches` makes: a window of two micro-batches of one row gives the same step as one
//! micro-batch of both rows (which pads the shorter row), and the window's gradient and loss
//! are means over its trained tokens, not means of the micro-batches' means.
//!
//! The gradient of the two layouts agrees to about 1e-6 of each matrix's norm, not to the bit:
//! the f32 sums over tokens run in another order (padding itself adds exact zeros; rows of
//! equal length differ as much).

mod common;
use common::{model_with_adapters, test_device};

use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor};
use feinschliff_data::batch::{Batch, make_batch};
use feinschliff_data::format::Example;
use feinschliff_model::llama::Llama;
use feinschliff_train::optim::adamw;
use feinschliff_train::pass::backprop::{AdapterGrads, MlpActivations, forward_backward};
use feinschliff_train::run_config::RunConfig;
use feinschliff_train::stream::step_batches;
use feinschliff_train::train_step::{StepReport, StepSettings, train_step};

/// The tokenizer's pad id (`<|im_end|>`).
const PAD_ID: u32 = 2;

/// Two examples of 11 and 6 tokens with 8 and 2 trained tokens (prompt tokens untrained).
fn examples() -> Vec<Example> {
    let example = |ids: Vec<u32>, prompt: usize| Example {
        trained: (0..ids.len()).map(|k| k >= prompt).collect(),
        ids,
    };
    vec![
        example(vec![5, 17, 42, 8, 66, 23, 13, 51, 9, 30, 71], 3),
        example(vec![3, 14, 15, 92, 65, 35], 4),
    ]
}

/// A run configuration with `micro_batch` and `grad_accum`, no packing, no dropout, some
/// weight decay; otherwise the defaults (AdamW at lr 2e-4, eps 1e-8).
fn config(micro_batch: usize, grad_accum: usize, max_grad_norm: f64) -> RunConfig {
    let overrides = [
        format!("train.micro_batch={micro_batch}"),
        format!("train.grad_accum={grad_accum}"),
        format!("train.max_grad_norm={max_grad_norm:?}"),
        "train.weight_decay=0.01".into(),
        "data.packing=false".into(),
        "lora.dropout=0.0".into(),
    ];
    let minimal = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
    RunConfig::parse(minimal, &overrides).unwrap()
}

/// The micro-batches of step 0 under `config`: both examples, one row each.
fn batches(config: &RunConfig) -> Vec<Batch> {
    let rows = vec![vec![0], vec![1]];
    step_batches(&rows, &examples(), config, 0, PAD_ID)
}

/// Every adapter matrix of `model` (A and B of each projection, in order), flattened.
fn adapter_values(model: &Llama) -> Vec<Vec<f32>> {
    let values = |t: Tensor<2>| t.inner().try_into_vec_as::<f32>().unwrap();
    model
        .adapters()
        .into_iter()
        .flat_map(|(_, a)| [values(a.lora_a.val()), values(a.lora_b.val())])
        .collect()
}

/// The adapters before and after one step of `optim` at learning rate `lr` on the batches of
/// `config`, with the step's report.
fn one_step(
    optim: &mut ModuleOptimizer,
    config: &RunConfig,
    lr: f64,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, StepReport) {
    let device = test_device().autodiff();
    let model = model_with_adapters("tied_gqa", 0.0, &device);
    let before = adapter_values(&model);
    let settings = StepSettings {
        lr,
        max_grad_norm: config.train.max_grad_norm,
        dropout_seed: 7,
        mlp: MlpActivations::Keep,
    };
    let batches = batches(config);
    let (model, report) = train_step(model, optim, &batches, settings, &device.clone().inner());
    (before, adapter_values(&model), report)
}

/// The largest `‖ours − theirs‖ / ‖theirs‖` (Frobenius norms) of any matrix.
fn relative_difference(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    ours.iter()
        .zip(theirs)
        .map(|(ours, theirs)| {
            let mut diff = ours.iter().zip(theirs).map(|(a, b)| (a - b) as f64);
            let mut reference = theirs.iter().map(|b| *b as f64);
            norm(&mut diff) / norm(&mut reference)
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_micro_batches_update_like_one_batch_of_both_rows() {
    let (accumulated, together) = (config(1, 2, 1.0), config(2, 1, 1.0));
    let (single_rows, padded) = (batches(&accumulated), batches(&together));
    assert_eq!(single_rows.len(), 2);
    assert_eq!([padded.len(), padded[0].rows, padded[0].len], [1, 2, 11]);
    assert!(
        padded[0].real_tokens < 2 * 11,
        "the shorter row must be padded"
    );
    let step = |config: &RunConfig| one_step(&mut adamw(config).init(), config, config.train.lr);
    let (before, after_accumulated, report_accumulated) = step(&accumulated);
    let (_, after_together, report_together) = step(&together);

    let (loss, grad_norm) = (report_together.loss, report_together.grad_norm);
    assert!(grad_norm > 1.0, "the step must clip (norm {grad_norm})");
    assert!(
        (report_accumulated.loss - loss).abs() <= 1e-6 * loss,
        "loss {} vs {loss}",
        report_accumulated.loss
    );
    assert!(
        (report_accumulated.grad_norm - grad_norm).abs() <= 1e-6 * grad_norm,
        "gradient norm {} vs {grad_norm}",
        report_accumulated.grad_norm
    );
    assert!(
        relative_difference(&after_together, &before) > 1e-3,
        "no step"
    );
    let differ = relative_difference(&after_accumulated, &after_together);
    assert!(differ <= 1e-6, "adapters differ by {differ:e}");
}

/// Sums of the loss and of the adapter gradients (per adapter matrix, in adapter order) of
/// `model` on `batch`, unnormalised.
fn sums(model: &Llama, batch: &Batch, device: &Device) -> (f64, Vec<Vec<f32>>) {
    let mut grads = AdapterGrads::default();
    let loss = forward_backward(
        model,
        batch,
        1.0,
        0,
        MlpActivations::Keep,
        device,
        &mut grads,
    )
    .loss;
    let grads = grads.into_inner();
    let by_id = |id| {
        let (_, grad) = grads.iter().find(|(g, _)| *g == id).unwrap();
        grad.clone().try_into_vec_as::<f32>().unwrap()
    };
    let per_matrix = model
        .adapters()
        .into_iter()
        .flat_map(|(_, a)| [by_id(a.lora_a.id), by_id(a.lora_b.id)])
        .collect();
    (loss, per_matrix)
}

/// The loss and gradient of a window: `Σ weight · sums` over its micro-batches.
#[derive(Default)]
struct Weighted {
    loss: f64,
    grads: Vec<Vec<f32>>,
}

impl Weighted {
    fn add(&mut self, (loss, grads): &(f64, Vec<Vec<f32>>), weight: f64) {
        self.loss += loss * weight;
        self.grads.resize_with(grads.len(), Vec::new);
        for (sum, grad) in self.grads.iter_mut().zip(grads) {
            sum.resize(grad.len(), 0.0);
            for (s, g) in sum.iter_mut().zip(grad) {
                *s += (*g as f64 * weight) as f32;
            }
        }
    }
}

#[test]
fn the_window_is_weighted_by_trained_tokens() {
    let device = test_device();
    let model = model_with_adapters("tied_gqa", 0.0, &device);
    let examples = examples();
    let counts: Vec<usize> = examples.iter().map(Example::trained_tokens).collect();
    assert_eq!(counts, [8, 2]);
    let total: usize = counts.iter().sum();
    let (mut token_mean, mut mean_of_means) = (Weighted::default(), Weighted::default());
    for (example, &count) in examples.iter().zip(&counts) {
        let batch = make_batch(&[vec![example]], None, PAD_ID);
        let sums = sums(&model, &batch, &device);
        token_mean.add(&sums, 1.0 / total as f64);
        mean_of_means.add(&sums, 0.5 / count as f64);
    }

    // Plain SGD reads the applied gradient back: after = before - lr · gradient. A large lr
    // keeps the rounding of `after` small against the step.
    let lr = 1e4;
    let mut applied_by_layout = Vec::new();
    for (micro_batch, grad_accum) in [(1, 2), (2, 1)] {
        let config = config(micro_batch, grad_accum, 0.0);
        let (before, after, report) = one_step(&mut SgdConfig::new().init(), &config, lr);
        let applied: Vec<Vec<f32>> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| {
                b.iter()
                    .zip(a)
                    .map(|(b, a)| ((*b as f64 - *a as f64) / lr) as f32)
                    .collect()
            })
            .collect();
        let layout = format!("micro_batch {micro_batch}, grad_accum {grad_accum}");
        let loss = token_mean.loss;
        assert!(
            (report.loss - loss).abs() <= 1e-6 * loss,
            "{layout}: loss {} vs token mean {loss}",
            report.loss
        );
        let differ = relative_difference(&applied, &token_mean.grads);
        assert!(differ <= 5e-6, "{layout}: gradient differs by {differ:e}");
        let other_loss = mean_of_means.loss;
        assert!((report.loss - other_loss).abs() > 0.01 * other_loss);
        assert!(relative_difference(&applied, &mean_of_means.grads) > 0.1);
        applied_by_layout.push(applied);
    }
    let differ = relative_difference(&applied_by_layout[0], &applied_by_layout[1]);
    assert!(
        differ <= 5e-6,
        "the layouts' gradients differ by {differ:e}"
    );
}
