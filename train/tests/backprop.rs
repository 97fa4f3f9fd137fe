//! The hand-written training pass against Burn's autodiff on the fixture models: the same loss
//! and the same adapter gradients, on packed rows with several examples and unscored labels;
//! and, with dropout, gradients that agree with finite differences of the loss (so the masks
//! of the forward and backward passes are the same ones).

mod common;
use common::{
    model_with_adapters, model_with_adapters_as, model_with_dora_adapters,
    model_with_dora_adapters_as, test_device, write_wide_model,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use burn::optim::GradientsParams;
use burn::tensor::{DType, Int, Tensor, TensorData};
use feinschliff_data::batch::{Batch, IGNORE_INDEX};
use feinschliff_model::kernels::bf16_matmul;
use feinschliff_model::kernels::host_tensor::is_flex;
use feinschliff_model::linear::BaseStorage;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::{LoraAdapter, LoraSpec};
use feinschliff_model::loss::causal_lm_loss_sum;
use feinschliff_model::quant::BaseQuant;
use feinschliff_train::pass::backprop::{AdapterGrads, MlpActivations, forward_backward};

/// Two rows of 12 tokens: row 0 packs examples of 5 and 7 tokens, row 1 one example of 9 and
/// three padding tokens; some labels are not scored.
fn batch() -> Batch {
    let ids = vec![
        5, 17, 42, 8, 66, 23, 13, 51, 9, 30, 2, 71, //
        3, 14, 15, 92, 65, 35, 89, 79, 32, 0, 0, 0,
    ];
    let mut labels = ids.clone();
    for k in [0, 5, 6, 12, 21, 22, 23] {
        labels[k] = IGNORE_INDEX;
    }
    let positions = vec![
        0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2,
    ];
    let segments = vec![
        0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1,
    ];
    Batch {
        ids,
        labels,
        positions,
        segments,
        rows: 2,
        len: 12,
        trained_tokens: 15,
        real_tokens: 21,
    }
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.detach().try_into_vec_as::<f32>().unwrap()
}

/// One row of `len` tokens holding two examples (the second starts at 2/3), every label
/// scored: long enough to span several query blocks of the training attention.
fn long_batch(len: usize) -> Batch {
    let split = 2 * len / 3;
    let ids: Vec<i64> = (0..len as i64).map(|k| (k * 37 + 11) % 89).collect();
    let positions = (0..len as i64)
        .map(|k| {
            if k < split as i64 {
                k
            } else {
                k - split as i64
            }
        })
        .collect();
    let segments = (0..len).map(|k| (k >= split) as i64).collect();
    Batch {
        labels: ids.clone(),
        ids,
        positions,
        segments,
        rows: 1,
        len,
        trained_tokens: len - 1,
        real_tokens: len,
    }
}

fn check_against_autodiff(name: &str) {
    check_batch_against_autodiff(name, batch());
}

fn check_batch_against_autodiff(name: &str, batch: Batch) {
    let device = test_device().autodiff();
    let model = model_with_adapters(name, 0.0, &device);
    check_model_against_autodiff(name, model, batch);
}

/// The training pass of `model` (on an autodiff device) against autodiff.
fn check_model_against_autodiff(name: &str, model: Llama, batch: Batch) {
    let device = model.model.norm.weight.val().device();
    let scale = 1.0 / batch.trained_tokens as f64;

    let int = |v: &Vec<i64>| {
        Tensor::<2, Int>::from_data(TensorData::new(v.clone(), [batch.rows, batch.len]), &device)
    };
    let logits =
        model.forward_segments(int(&batch.ids), int(&batch.positions), int(&batch.segments));
    let loss = causal_lm_loss_sum(logits, int(&batch.labels)).nll * scale;
    let expected_loss = loss.clone().into_scalar::<f64>();
    let expected = GradientsParams::from_grads(loss.backward(), &model);

    let mut grads = AdapterGrads::default();
    let result = forward_backward(
        &model,
        &batch,
        scale,
        0,
        MlpActivations::Keep,
        &device.clone().inner(),
        &mut grads,
    );
    assert!(
        (result.loss - expected_loss).abs() <= 1e-5 * expected_loss.abs(),
        "{name}: loss {} vs autodiff {expected_loss}",
        result.loss
    );
    let grads = grads.into_inner();
    assert_eq!(grads.len(), expected.len(), "{name}: gradient count");
    for (id, grad) in grads {
        let ours = values(grad);
        let theirs = values(expected.get::<2>(id).expect("autodiff has this gradient"));
        let largest = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(&theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(largest > 0.0, "{name}: a zero gradient tests nothing");
        assert!(
            worst <= 1e-4 * largest + 1e-7,
            "{name}: gradient differs by {worst} (largest {largest})"
        );
    }
}

/// Autodiff's products take the quantized weights dequantized, the pass's the tiled kernels.
#[test]
fn matches_autodiff_on_a_quantized_base() {
    let dir = tempfile::tempdir().unwrap();
    write_wide_model(dir.path());
    let device = test_device().autodiff();
    for quant in [BaseQuant::Q8_0, BaseQuant::Q4K, BaseQuant::Nf4] {
        let storage = BaseStorage {
            dtype: DType::F32,
            quant,
        };
        let model = model_with_adapters_as(dir.path(), 0.0, storage, &device);
        let quantized = model
            .projections()
            .iter()
            .filter(|(_, p)| p.quantized.is_some())
            .count();
        // o_proj's rows of 32 are Q8_0 and Q5_0 blocks (Q4_K's fallback), but no NF4 ones.
        let expected = if quant == BaseQuant::Nf4 { 12 } else { 14 };
        assert_eq!(quantized, expected, "{quant:?}: quantized projections");
        check_model_against_autodiff(&format!("{quant:?}"), model, batch());
    }
}

#[test]
fn matches_autodiff_tied_embeddings_with_grouped_query_attention() {
    check_against_autodiff("tied_gqa");
}

#[test]
fn matches_autodiff_untied_multi_head_with_explicit_head_dim_and_biases() {
    check_against_autodiff("untied_mha");
}

#[test]
fn matches_autodiff_on_rows_longer_than_a_query_block() {
    check_batch_against_autodiff("tied_gqa", long_batch(300));
}

#[test]
fn matches_autodiff_with_llama3_rope_scaling() {
    check_against_autodiff("llama3_rope");
}

#[test]
fn matches_autodiff_for_every_family() {
    for name in [
        "qwen2_tied",
        "qwen2_window",
        "qwen3",
        "qwen3_tied_bias_window",
        "mistral_window",
        "mistral_no_window",
    ] {
        check_against_autodiff(name);
    }
}

#[test]
fn matches_autodiff_with_a_sliding_window_across_query_blocks() {
    check_batch_against_autodiff("qwen3_tied_bias_window", long_batch(300));
}

#[test]
fn dora_matches_autodiff() {
    let device = test_device().autodiff();
    for name in ["tied_gqa", "untied_mha", "qwen3_tied_bias_window"] {
        let model = model_with_dora_adapters(name, 0.0, &device);
        check_model_against_autodiff(&format!("{name} DoRA"), model, batch());
    }
}

/// DoRA on a quantized base: the norm and the magnitude's start take the dequantized weights,
/// the products the tiled kernels.
#[test]
fn dora_matches_autodiff_on_a_quantized_base() {
    let dir = tempfile::tempdir().unwrap();
    write_wide_model(dir.path());
    let device = test_device().autodiff();
    for quant in [BaseQuant::Q8_0, BaseQuant::Nf4] {
        let storage = BaseStorage {
            dtype: DType::F32,
            quant,
        };
        let model = model_with_dora_adapters_as(dir.path(), 0.0, storage, &device);
        check_model_against_autodiff(&format!("{quant:?} DoRA"), model, batch());
    }
}

/// With dropout, DoRA multiplies the dropped input by `W` as well; the magnitudes' gradients
/// (their slope does not pass through the detached norm) against finite differences check that
/// branch and, through the earlier layers, its input gradient.
#[test]
fn dora_dropout_gradients_agree_with_finite_differences() {
    let device = test_device();
    let plain = device.clone().inner();
    let batch = batch();
    let loss_of = |model: &Llama, grads: &mut AdapterGrads| {
        forward_backward(model, &batch, 1.0, 11, MlpActivations::Keep, &plain, grads).loss
    };
    let model = model_with_dora_adapters("tied_gqa", 0.3, &device);
    let mut grads = AdapterGrads::default();
    loss_of(&model, &mut grads);
    let grads = grads.into_inner();
    let mut rng = StdRng::seed_from_u64(5);
    let mut slope_expected = 0.0;
    let mut directions = Vec::new();
    for (_, adapter) in model.adapters() {
        let magnitude = adapter.magnitude.as_ref().unwrap();
        let grad = grads.iter().find(|(id, _)| *id == magnitude.id).unwrap();
        let v: Vec<f32> = (0..magnitude.val().dims()[1])
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        slope_expected += values(grad.1.clone())
            .iter()
            .zip(&v)
            .map(|(g, v)| (g * v) as f64)
            .sum::<f64>();
        directions.push(v);
    }
    let h = 1e-2f32;
    let shifted = |delta: f32| {
        let mut model = model_with_dora_adapters("tied_gqa", 0.3, &device);
        for ((path, proj), v) in model.projections_mut().into_iter().zip(&directions) {
            let old = proj.lora.take().unwrap();
            let magnitude = old.magnitude.unwrap().val();
            let dims = magnitude.dims();
            let moved: Vec<f32> = values(magnitude)
                .iter()
                .zip(v)
                .map(|(m, v)| m + delta * v)
                .collect();
            let spec = LoraSpec {
                rank: 4,
                alpha: 8.0,
                dropout: 0.3,
                target_modules: vec![],
                layers_to_transform: None,
                use_rslora: false,
                use_dora: true,
            };
            let moved = Tensor::from_data(TensorData::new(moved, dims), &device);
            let (a, b) = (old.lora_a.val(), old.lora_b.val());
            proj.lora = Some(LoraAdapter::from_tensors(
                &path,
                a,
                b,
                Some(moved),
                &spec,
                &device,
            ));
        }
        loss_of(&model, &mut AdapterGrads::default())
    };
    let slope = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
    assert!(
        (slope - slope_expected).abs() <= 0.02 * slope_expected.abs() + 1e-3,
        "finite difference {slope} vs gradient {slope_expected}"
    );
}

#[test]
fn dropout_gradients_agree_with_finite_differences() {
    let device = test_device();
    let model = model_with_adapters("tied_gqa", 0.3, &device);
    let batch = batch();
    let loss_of = |model: &Llama, grads: &mut AdapterGrads| {
        let plain = device.clone().inner();
        forward_backward(model, &batch, 1.0, 11, MlpActivations::Keep, &plain, grads).loss
    };
    let mut grads = AdapterGrads::default();
    let base_loss = loss_of(&model, &mut grads);
    let without_dropout = model_with_adapters("tied_gqa", 0.0, &device);
    assert_ne!(
        base_loss,
        loss_of(&without_dropout, &mut AdapterGrads::default()),
        "dropout 0.3 must change the loss"
    );
    let grads = grads.into_inner();

    // Perturb the largest entry of a few adapters' A and compare the slope with the gradient.
    for (path, _) in model.adapters().into_iter().step_by(3) {
        let adapter = &model
            .adapters()
            .into_iter()
            .find(|(p, _)| *p == path)
            .unwrap()
            .1;
        let a = values(adapter.lora_a.val());
        let grad = values(
            grads
                .iter()
                .find(|(id, _)| *id == adapter.lora_a.id)
                .unwrap()
                .1
                .clone(),
        );
        let (k, g) = grad
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .map(|(k, g)| (k, *g as f64))
            .unwrap();
        let h = 2e-3f32;
        let shifted = |delta: f32| {
            let mut model = model_with_adapters("tied_gqa", 0.3, &device);
            let proj = model
                .projections_mut()
                .into_iter()
                .find(|(p, _)| *p == path)
                .unwrap()
                .1;
            let old = proj.lora.take().unwrap();
            let mut moved = a.clone();
            moved[k] += delta;
            let dims = old.lora_a.val().dims();
            let spec = LoraSpec {
                rank: dims[0],
                alpha: old.scaling * dims[0] as f64,
                dropout: 0.3,
                target_modules: vec![],
                layers_to_transform: None,
                use_rslora: false,
                use_dora: false,
            };
            let new_a = Tensor::from_data(TensorData::new(moved, dims), &device);
            proj.lora = Some(LoraAdapter::from_tensors(
                &path,
                new_a,
                old.lora_b.val(),
                None,
                &spec,
                &device,
            ));
            loss_of(&model, &mut AdapterGrads::default())
        };
        let slope = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
        assert!(
            (slope - g).abs() <= 0.02 * g.abs() + 1e-4,
            "{path}: finite difference {slope} vs gradient {g}"
        );
    }
}

/// One pass over `batch()` with the base stored in one dtype and multiplied in another.
struct BasePass {
    /// Loss of the training pass.
    loss: f64,
    /// Its adapter gradients, flattened.
    grads: Vec<f32>,
    /// Loss of the model's own forward (what validation runs) on the same model.
    forward_loss: f64,
}

fn pass_with_base(storage: DType, products: DType) -> BasePass {
    let device = test_device();
    let mut model = model_with_adapters("tied_gqa", 0.0, &device);
    model.set_base_dtypes(storage, products);
    let batch = batch();
    let mut grads = AdapterGrads::default();
    let loss = forward_backward(
        &model,
        &batch,
        1.0,
        0,
        MlpActivations::Keep,
        &device,
        &mut grads,
    )
    .loss;
    let int = |v: &Vec<i64>| {
        Tensor::<2, Int>::from_data(TensorData::new(v.clone(), [batch.rows, batch.len]), &device)
    };
    let logits =
        model.forward_segments(int(&batch.ids), int(&batch.positions), int(&batch.segments));
    let forward_loss = causal_lm_loss_sum(logits, int(&batch.labels))
        .nll
        .into_scalar::<f64>();
    let grads = grads
        .into_inner()
        .into_iter()
        .flat_map(|(_, g)| values(g))
        .collect();
    BasePass {
        loss,
        grads,
        forward_loss,
    }
}

/// Asserts that `pass` is a bf16-sized perturbation of the f32 result `reference`.
fn assert_close_not_equal(what: &str, pass: &BasePass, reference: &BasePass) {
    let (loss, loss32) = (pass.loss, reference.loss);
    assert!(
        (loss - loss32).abs() <= 1e-2 * loss32.abs(),
        "{what}: loss {loss} vs f32 {loss32}"
    );
    let (grads, grads32) = (&pass.grads, &reference.grads);
    assert_ne!(grads, grads32, "{what}: bf16 must change the result");
    let dot: f64 = grads.iter().zip(grads32).map(|(a, b)| (a * b) as f64).sum();
    let norm = |g: &[f32]| g.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
    let cosine = dot / (norm(grads) * norm(grads32));
    assert!(
        cosine > 0.999,
        "{what}: gradients point elsewhere: cosine {cosine}"
    );
}

#[test]
fn bf16_base_stays_close_to_f32() {
    let reference = pass_with_base(DType::F32, DType::F32);
    let bf16_products = pass_with_base(DType::BF16, DType::BF16);
    let f32_products = pass_with_base(DType::BF16, DType::F32);
    assert_close_not_equal("bf16 base, bf16 products", &bf16_products, &reference);
    assert_close_not_equal("bf16 base, f32 products", &f32_products, &reference);
    // Validation runs the model's own forward: with f32 products of a bf16 base it must multiply
    // as the training pass does, not round its inputs to bf16.
    let (forward, training) = (f32_products.forward_loss, f32_products.loss);
    assert!(
        (forward - training).abs() <= 1e-5 * training.abs(),
        "bf16 base, f32 products: the model's forward gives loss {forward}, the training pass {training}"
    );
    // LibTorch multiplies bf16 by bf16, flex through its bf16 kernel (inputs rounded to bf16)
    // where the CPU has AVX512-BF16; elsewhere flex multiplies in f32 and the two agree.
    match !is_flex(&test_device()) || bf16_matmul::available() {
        true => assert_ne!(
            bf16_products.grads, f32_products.grads,
            "f32 products of a bf16 base must not round like bf16 ones"
        ),
        false => eprintln!(
            "skipped the bf16-products check: this CPU lacks AVX512-BF16, so flex multiplies a \
             bf16 base in f32"
        ),
    }
}

/// Evaluation on the training pass's forward, packed, gives the loss of scoring each text on
/// its own through the model's Burn forward (`feinschliff_model::eval::evaluate`), for every
/// family; with adapters attached too.
#[test]
fn packed_evaluation_equals_one_text_at_a_time() {
    use feinschliff_data::tokenize::TextTokenizer;
    use feinschliff_model::eval::{evaluate, text_examples};
    use feinschliff_train::packed_eval::evaluate_packed;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let texts: Vec<String> = std::fs::read_to_string(root.join("tests/fixtures/eval_sample.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let tokenizer =
        TextTokenizer::from_model_dir(&root.join("tests/fixtures/llama/tied_gqa")).unwrap();
    let device = test_device();
    for name in [
        "tied_gqa",
        "qwen2_window",
        "qwen3_tied_bias_window",
        "mistral_window",
    ] {
        let model = model_with_adapters(name, 0.0, &device);
        let reference = evaluate(&model, &tokenizer, &texts, 24, &device).unwrap();
        let (examples, truncated) = text_examples(&tokenizer, &texts, 24).unwrap();
        assert!(truncated > 0, "some texts must be cut at 24 tokens");
        for batch_tokens in [1, 40, 4096] {
            let packed = evaluate_packed(&model, &examples, batch_tokens, 0, &device, |_, _, _| {});
            assert_eq!(packed.tokens, reference.tokens, "{name}");
            let relative = (packed.loss - reference.loss).abs() / reference.loss;
            assert!(
                relative <= 1e-5,
                "{name}, {batch_tokens} tokens per batch: {} vs {}",
                packed.loss,
                reference.loss
            );
        }
    }
}

/// Recomputing the MLP's gate and up projections in the backward pass (with dropout, whose
/// masks must be rebuilt the same) gives the loss and gradients of keeping them, bit for bit.
#[test]
fn recomputing_the_mlp_changes_nothing() {
    let device = test_device();
    recompute_changes_nothing(model_with_adapters("tied_gqa", 0.3, &device));
    recompute_changes_nothing(model_with_dora_adapters("tied_gqa", 0.3, &device));
}

/// Keeping and recomputing the MLP give `model` the same loss and gradients, bit for bit.
fn recompute_changes_nothing(model: Llama) {
    let device = model.model.norm.weight.val().device();
    let batch = batch();
    let run = |mlp: MlpActivations| {
        let mut grads = AdapterGrads::default();
        let loss = forward_backward(&model, &batch, 1.0, 11, mlp, &device, &mut grads).loss;
        let grads: Vec<Vec<f32>> = grads
            .into_inner()
            .into_iter()
            .map(|(_, g)| values(g))
            .collect();
        (loss, grads)
    };
    let (kept, recomputed) = (run(MlpActivations::Keep), run(MlpActivations::Recompute));
    assert_eq!(kept.0.to_bits(), recomputed.0.to_bits(), "loss");
    assert!(!kept.1.is_empty());
    assert_eq!(kept.1, recomputed.1, "gradients");
}
