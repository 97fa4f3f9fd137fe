//! What the training integration tests share.

#[path = "../../../model/tests/common/mod.rs"]
mod model_common;
pub use model_common::test_device;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::{LoraAdapter, LoraSpec, TARGET_MODULES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The fixture model `name` (`tests/fixtures/llama/`) with adapters of rank 4 on every
/// projection, `A` and `B` random (a fresh `B = 0` would leave every `A` gradient zero and hide
/// mistakes); the same adapters on every call.
pub fn model_with_adapters(name: &str, dropout: f64, device: &Device) -> Llama {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama")
        .join(name);
    let mut model = HfModel::load(&dir, device).unwrap().model;
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout,
        target_modules: TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
        layers_to_transform: None,
        use_rslora: false,
    };
    model.attach_lora(&spec, device);
    // Adapters from a fixed generator of our own: the device RNG is shared with tests running
    // in parallel, so it would not give the same adapters twice.
    let mut rng = StdRng::seed_from_u64(3);
    let plain = device.clone().inner();
    for (path, proj) in model.projections_mut() {
        let adapter = proj.lora.take().unwrap();
        let mut random = |dims: [usize; 2]| {
            let values: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| rng.random_range(-0.2..0.2))
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, dims), &plain)
        };
        let a = random(adapter.lora_a.val().dims());
        let b = random(adapter.lora_b.val().dims());
        proj.lora = Some(LoraAdapter::from_tensors(&path, a, b, &spec, device));
    }
    model
}
