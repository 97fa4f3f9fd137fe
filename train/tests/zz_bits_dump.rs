#![allow(dead_code, unused_imports)]
#[path = "../../model/tests/common/mod.rs"]
mod common;
use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_data::batch::{Batch, IGNORE_INDEX};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::llama::Llama;
use feinschliff_model::lora::{LoraAdapter, LoraSpec, TARGET_MODULES};
use feinschliff_train::pass::backprop::{AdapterGrads, forward_backward};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
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

/// The fixture with adapters on every projection, `A` and `B` random (a fresh `B = 0` would
/// leave every `A` gradient zero and hide mistakes).
fn model_with_adapters(name: &str, dropout: f64, device: &Device) -> Llama {
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

#[test]
fn dump_bits() {
    let path = std::env::var("DUMP").unwrap();
    let mut out = std::fs::File::create(path).unwrap();
    let device = Device::flex();
    for name in ["tied_gqa", "untied_mha", "llama3_rope"] {
        for dropout in [0.0, 0.1] {
            let model = model_with_adapters(name, dropout, &device);
            for batch in [batch(), long_batch(300)] {
                let mut grads = AdapterGrads::default();
                let r = forward_backward(&model, &batch, 0.37, 42, &device, &mut grads);
                writeln!(out, "{name} {dropout} loss {:016x}", r.loss.to_bits()).unwrap();
                for (_, g) in grads.into_inner() {
                    let v: Vec<f32> = g.try_into_vec_as::<f32>().unwrap();
                    let bits: Vec<String> =
                        v.iter().map(|x| format!("{:08x}", x.to_bits())).collect();
                    writeln!(out, "{}", bits.join(" ")).unwrap();
                }
            }
        }
    }
}
