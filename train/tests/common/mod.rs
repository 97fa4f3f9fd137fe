//! What the training integration tests share.

#[path = "../../../model/tests/common/mod.rs"]
pub mod model_common;
pub use model_common::test_device;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::safetensors_out::{StoreDtype, write_safetensors};
use feinschliff_model::linear::BaseStorage;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::{LoraAdapter, LoraSpec, TARGET_MODULES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The fixture model `name` (`tests/fixtures/llama/`) with adapters of rank 4 on every
/// projection, `A` and `B` random (a fresh `B = 0` would leave every `A` gradient zero and hide
/// mistakes); the same adapters on every call.
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn model_with_adapters(name: &str, dropout: f64, device: &Device) -> Llama {
    model_with_adapters_as(&fixture_dir(name), dropout, BaseStorage::default(), device)
}

/// The fixture model `name` (`tests/fixtures/llama/`).
fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama")
        .join(name)
}

/// [`model_with_adapters`] of the model in `dir`, its base kept as `storage` says (dtype,
/// quantization).
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn model_with_adapters_as(
    dir: &Path,
    dropout: f64,
    storage: BaseStorage,
    device: &Device,
) -> Llama {
    adapted_model(dir, dropout, storage, false, device)
}

/// [`model_with_adapters`] with DoRA adapters whose magnitudes are the fresh ones (the norms of
/// `W`'s rows) scaled by random factors in [0.8, 1.2), so that they differ from `‖W + s·BA‖`.
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn model_with_dora_adapters(name: &str, dropout: f64, device: &Device) -> Llama {
    model_with_dora_adapters_as(&fixture_dir(name), dropout, BaseStorage::default(), device)
}

/// [`model_with_dora_adapters`] of the model in `dir`, its base kept as `storage` says.
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn model_with_dora_adapters_as(
    dir: &Path,
    dropout: f64,
    storage: BaseStorage,
    device: &Device,
) -> Llama {
    adapted_model(dir, dropout, storage, true, device)
}

fn adapted_model(
    dir: &Path,
    dropout: f64,
    storage: BaseStorage,
    use_dora: bool,
    device: &Device,
) -> Llama {
    let mut model = HfModel::load_as(dir, storage, device).unwrap().model;
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout,
        target_modules: TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
        layers_to_transform: None,
        use_rslora: false,
        use_dora,
    };
    model.attach_lora(&spec, device);
    // Adapters from a fixed generator of our own: the device RNG is shared with tests running
    // in parallel, so it would not give the same adapters twice.
    let mut rng = StdRng::seed_from_u64(3);
    let plain = device.clone().inner();
    for (path, proj) in model.projections_mut() {
        let adapter = proj.lora.take().unwrap();
        let mut random = |dims: [usize; 2], low: f32, high: f32| {
            let values: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| rng.random_range(low..high))
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, dims), &plain)
        };
        let a = random(adapter.lora_a.val().dims(), -0.2, 0.2);
        let b = random(adapter.lora_b.val().dims(), -0.2, 0.2);
        let magnitude = adapter.magnitude.map(|m| {
            let m = m.val().inner();
            random(m.dims(), 0.8, 1.2) * m
        });
        proj.lora = Some(LoraAdapter::from_tensors(
            &path, a, b, magnitude, &spec, device,
        ));
    }
    model
}

/// Writes into `dir` a random two-layer Llama whose projections take rows of 256 and 512
/// values (whole Q4_K super-blocks and NF4 blocks; `o_proj`'s rows of 32 fall back), tied,
/// with grouped-query attention: `tied_gqa`'s config at hidden 256, intermediate 512.
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn write_wide_model(dir: &Path) {
    let fixture = fixture_dir("tied_gqa");
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["hidden_size"] = 256.into();
    config["intermediate_size"] = 512.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (hidden, inner, vocab) = (256, 512, 96);
    let mut shapes = BTreeMap::new();
    shapes.insert("model.embed_tokens.weight".to_string(), vec![vocab, hidden]);
    shapes.insert("model.norm.weight".to_string(), vec![hidden]);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [32, hidden]),
            ("self_attn.k_proj", [16, hidden]),
            ("self_attn.v_proj", [16, hidden]),
            ("self_attn.o_proj", [hidden, 32]),
            ("mlp.gate_proj", [inner, hidden]),
            ("mlp.up_proj", [inner, hidden]),
            ("mlp.down_proj", [hidden, inner]),
        ] {
            shapes.insert(format!("{p}.{name}.weight"), shape.to_vec());
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.insert(format!("{p}.{norm}.weight"), vec![hidden]);
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    let path = dir.join("model.safetensors");
    write_safetensors(&path, &shapes, StoreDtype::F32, |name| {
        let len = shapes[name].iter().product();
        Ok(match name.ends_with("norm.weight") {
            true => (0..len).map(|_| rng.random_range(0.8..1.2)).collect(),
            false => (0..len).map(|_| rng.random_range(-0.1..0.1)).collect(),
        })
    })
    .unwrap();
}
