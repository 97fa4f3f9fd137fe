//! Our optimizer path against PyTorch (`train/tests/fixtures/optim.json`, written by
//! `scripts/make_optim_fixtures.py`): the learning rates of transformers' schedules, and runs of
//! `torch.optim.AdamW` with `torch.nn.utils.clip_grad_norm_` replayed through `adamw(config)`,
//! `clip_global_norm` and a `ModuleOptimizer`, the way `train_step` applies them.

use std::path::Path;

use burn::module::{Module, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_train::optim::adamw;
use feinschliff_train::run_config::{RunConfig, Schedule};
use feinschliff_train::schedule::learning_rate;
use feinschliff_train::train_step::clip_global_norm;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    runs: Vec<Run>,
    schedules: Vec<ScheduleCase>,
}

/// `[train]` keys of a run, as the script passed them to PyTorch.
#[derive(Deserialize, Clone)]
struct TrainKeys {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    schedule: String,
    warmup_steps: usize,
    total_steps: usize,
}

#[derive(Deserialize)]
struct Run {
    name: String,
    train: TrainKeys,
    shapes: Vec<[usize; 2]>,
    initial: Vec<Vec<f32>>,
    steps: Vec<Step>,
}

/// One step of a run: its gradients in, PyTorch's results out.
#[derive(Deserialize)]
struct Step {
    grads: Vec<Vec<f32>>,
    lr: f64,
    norm: f64,
    clipped: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct ScheduleCase {
    schedule: String,
    lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    lrs: Vec<f64>,
}

/// The parameters of a run, as a module for the optimizer.
#[derive(Module, Debug)]
struct Tensors {
    params: Vec<Param<Tensor<2>>>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn schedule(name: &str) -> Schedule {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

/// The run configuration with `keys` in `[train]`, parsed as a run's configuration is.
fn config(keys: &TrainKeys) -> RunConfig {
    let set = |key: &str, value: String| format!("train.{key}={value}");
    let overrides = [
        set("lr", format!("{:?}", keys.lr)),
        set("beta1", format!("{:?}", keys.beta1)),
        set("beta2", format!("{:?}", keys.beta2)),
        set("eps", format!("{:?}", keys.eps)),
        set("weight_decay", format!("{:?}", keys.weight_decay)),
        set("max_grad_norm", format!("{:?}", keys.max_grad_norm)),
        set("schedule", format!("\"{}\"", keys.schedule)),
        set("warmup_steps", keys.warmup_steps.to_string()),
        set("max_steps", keys.total_steps.to_string()),
    ];
    let minimal = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
    RunConfig::parse(minimal, &overrides).unwrap()
}

fn tensor(values: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

/// The largest `|ours - theirs|` of a tensor relative to its largest `|theirs|` (an element
/// near 0 carries the rounding of the tensor's larger values).
fn relative_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let largest = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / largest
}

#[test]
fn learning_rates_match_transformers_schedules() {
    for case in fixture().schedules {
        let what = format!(
            "{} warm-up {} of {}",
            case.schedule, case.warmup_steps, case.total_steps
        );
        for (step, &theirs) in case.lrs.iter().enumerate() {
            let ours = learning_rate(
                schedule(&case.schedule),
                case.lr,
                case.warmup_steps,
                case.total_steps,
                step,
            );
            assert!(
                (ours - theirs).abs() <= 1e-9 * theirs.abs(),
                "{what}, step {step}: lr {ours} vs transformers {theirs}"
            );
        }
    }
}

/// The worst relative differences of a replay from PyTorch over all steps of a run.
struct Differences {
    /// Of the norm before clipping.
    norm: f64,
    /// Of the clipped gradients (per tensor, relative to its largest element).
    clipped: f32,
    /// Of the parameters after each step (the same way).
    params: f32,
}

/// Replays `run` with the `[train]` keys `keys` (the learning rate from our schedule, checked
/// against transformers') and compares each step with PyTorch's.
fn replay(run: &Run, keys: &TrainKeys) -> Differences {
    // As in a run: parameters on the autodiff device, gradients on the plain one.
    let device = Device::flex().autodiff();
    let plain = device.clone().inner();
    let config = config(keys);
    let train = &config.train;
    let mut optim: ModuleOptimizer = adamw(&config).init();
    let mut module = Tensors {
        params: run
            .initial
            .iter()
            .zip(&run.shapes)
            .map(|(v, &shape)| Param::from_tensor(tensor(v, shape, &device)))
            .collect(),
    };
    let ids: Vec<ParamId> = module.params.iter().map(|p| p.id).collect();
    let mut worst = Differences {
        norm: 0.0,
        clipped: 0.0,
        params: 0.0,
    };
    for (index, step) in run.steps.iter().enumerate() {
        let (peak, warmup, total) = (train.lr, train.warmup_steps, train.max_steps);
        let lr = learning_rate(train.schedule, peak, warmup, total, index);
        let name = &run.name;
        assert!(
            (lr - step.lr).abs() <= 1e-9 * step.lr,
            "{name}, step {index}: lr {lr} vs transformers {}",
            step.lr
        );
        let mut grads = GradientsParams::new();
        for ((id, grad), &shape) in ids.iter().zip(&step.grads).zip(&run.shapes) {
            grads.register(*id, tensor(grad, shape, &plain));
        }
        let norm = clip_global_norm(&mut grads, &ids, train.max_grad_norm);
        worst.norm = worst.norm.max((norm - step.norm).abs() / step.norm);
        for (id, theirs) in ids.iter().zip(&step.clipped) {
            let ours = values(grads.get::<2>(*id).unwrap());
            worst.clipped = worst.clipped.max(relative_difference(&ours, theirs));
        }
        module = optim.step(lr, module, grads);
        for (param, theirs) in module.params.iter().zip(&step.params) {
            let ours = values(param.val());
            worst.params = worst.params.max(relative_difference(&ours, theirs));
        }
    }
    worst
}

#[test]
fn adamw_with_clipping_matches_pytorch() {
    for run in fixture().runs {
        let worst = replay(&run, &run.train);
        let name = &run.name;
        assert!(
            worst.norm <= 1e-6,
            "{name}: norm differs by {:e}",
            worst.norm
        );
        assert!(
            worst.clipped <= 1e-6,
            "{name}: clipped gradients differ by {:e}",
            worst.clipped
        );
        assert!(
            worst.params <= 1e-6,
            "{name}: parameters differ by {:e}",
            worst.params
        );
    }
}

/// A named change of `[train]` keys.
type Change = (&'static str, fn(&mut TrainKeys));

/// The comparison is sharp enough to see each hyperparameter: replayed with one of them
/// changed, the parameters leave the tolerance by far.
#[test]
fn a_changed_hyperparameter_leaves_the_tolerance() {
    let fixture = fixture();
    let run = fixture
        .runs
        .iter()
        .find(|r| r.name == "every_term")
        .unwrap();
    let changes: [Change; 5] = [
        ("eps 1e-8", |k| k.eps = 1e-8),
        ("no weight decay", |k| k.weight_decay = 0.0),
        ("beta1 0.9", |k| k.beta1 = 0.9),
        ("beta2 0.999", |k| k.beta2 = 0.999),
        ("no clipping", |k| k.max_grad_norm = 0.0),
    ];
    for (what, change) in changes {
        let mut keys = run.train.clone();
        change(&mut keys);
        let worst = replay(run, &keys);
        assert!(
            worst.params > 1e-4,
            "{what}: parameters still within {:e}",
            worst.params
        );
    }
}
