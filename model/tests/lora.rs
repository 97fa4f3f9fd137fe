//! LoRA on the tiny fixture model: a fresh adapter leaves the logits unchanged (B = 0), only
//! adapter parameters get gradients, and PEFT's Kaiming-uniform bound holds for A.

mod common;
use common::test_device;

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::lora::{LoraSpec, TARGET_MODULES};
use feinschliff_model::loss::causal_lm_loss_sum;

#[test]
fn fresh_adapters_change_nothing_and_only_they_get_gradients() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama/tied_gqa");
    let device = test_device().autodiff();
    let mut model = HfModel::load(&dir, &device).unwrap().model;
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![5i64, 17, 42, 8, 66, 23, 13, 51], [1, 8]),
        &device,
    );
    let positions = Tensor::<1, Int>::arange(0..8, &device).reshape([1, 8]);
    let before: Vec<f32> = model
        .forward(ids.clone(), positions.clone(), None)
        .detach()
        .try_into_vec_as::<f32>()
        .unwrap();

    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
        layers_to_transform: None,
        use_rslora: false,
        use_dora: false,
    };
    assert_eq!(model.attach_lora(&spec, &device), 14);
    let logits = model.forward(ids.clone(), positions, None);
    let after: Vec<f32> = logits.clone().detach().try_into_vec_as::<f32>().unwrap();
    assert_eq!(
        before, after,
        "B = 0: a fresh adapter must not change the model"
    );

    for (path, adapter) in model.adapters() {
        let a: Vec<f32> = adapter
            .lora_a
            .val()
            .detach()
            .try_into_vec_as::<f32>()
            .unwrap();
        let bound = 1.0 / (adapter.lora_a.val().dims()[1] as f32).sqrt();
        assert!(
            a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| *v != 0.0),
            "{path}"
        );
    }

    let loss = causal_lm_loss_sum(logits, ids).nll;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    assert_eq!(
        grads.len(),
        28,
        "exactly the 14 A and 14 B matrices get gradients"
    );
    for (path, adapter) in model.adapters() {
        assert!(
            grads.get::<2>(adapter.lora_b.id).is_some(),
            "{path}: no gradient for B"
        );
    }
    assert!(
        grads.get::<2>(model.model.embed_tokens.id).is_none(),
        "the frozen embedding got a gradient"
    );
}
