//! Parity with transformers: tiny random checkpoints made by `scripts/make_fixtures.py` carry
//! the logits transformers computed for fixed token ids; ours must match them, and incremental
//! decoding with the KV cache must match the full forward.

mod common;
use common::{assert_batched_generation_equals_alone, test_device};

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Int, Tensor, TensorData};
use feinschliff_model::io::hf::HfModel;
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama")
        .join(name)
}

/// The token ids `[batch, seq]`, attention mask and expected logits `[batch, seq, vocab]`.
struct Expected {
    ids: Vec<i64>,
    mask: Vec<i64>,
    logits: Vec<f32>,
    batch: usize,
    seq: usize,
    vocab: usize,
}

fn expected(dir: &Path) -> Expected {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |name: &str| -> Vec<i64> {
        let view = file.tensor(name).unwrap();
        view.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let logits = file.tensor("logits").unwrap();
    let [batch, seq, vocab] = logits.shape().try_into().unwrap();
    Expected {
        ids: i64s("input_ids"),
        mask: i64s("attention_mask"),
        logits: logits
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        batch,
        seq,
        vocab,
    }
}

fn logits_of(tensor: Tensor<3>) -> Vec<f32> {
    tensor.try_into_vec_as::<f32>().unwrap()
}

/// Largest |ours - theirs| over the positions whose attention mask is 1.
fn max_diff_at_real_tokens(ours: &[f32], exp: &Expected) -> f32 {
    let mut worst = 0.0f32;
    for (pos, &m) in exp.mask.iter().enumerate() {
        if m == 1 {
            let range = pos * exp.vocab..(pos + 1) * exp.vocab;
            for (a, b) in ours[range.clone()].iter().zip(&exp.logits[range]) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

fn check_full_forward(name: &str) {
    let dir = fixture(name);
    let device = test_device();
    let model = HfModel::load(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp = expected(&dir);
    let (batch, seq) = (exp.batch, exp.seq);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(exp.ids.clone(), [batch, seq]), &device);
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
        .reshape([1, seq])
        .expand([batch, seq]);
    let padding: Vec<bool> = exp.mask.iter().map(|&m| m == 0).collect();
    let padding = Tensor::<2, Bool>::from_data(TensorData::new(padding, [batch, seq]), &device);
    let ours = logits_of(model.model.forward(ids, positions, Some(&padding)));
    let diff = max_diff_at_real_tokens(&ours, &exp);
    let spread = exp.logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        spread > 0.5,
        "{name}: expected logits are too flat ({spread}) to test anything"
    );
    assert!(
        diff <= TOLERANCE,
        "{name}: max |Δlogit| = {diff:e} > {TOLERANCE:e}"
    );
    eprintln!("{name}: max |Δlogit| = {diff:e} (max |logit| {spread})");
}

#[test]
fn tied_embeddings_with_grouped_query_attention() {
    check_full_forward("tied_gqa");
}

#[test]
fn untied_multi_head_with_explicit_head_dim_and_biases() {
    check_full_forward("untied_mha");
}

#[test]
fn llama3_rope_scaling() {
    check_full_forward("llama3_rope");
}

#[test]
fn bf16_checkpoint_sharded_with_index() {
    check_full_forward("bf16_sharded");
}

#[test]
fn config_in_transformers_v5_rope_parameters_form() {
    check_full_forward("v5_rope_parameters");
}

#[test]
fn f16_checkpoint() {
    check_full_forward("f16");
}

#[test]
fn qwen2_tied_with_qkv_biases() {
    check_full_forward("qwen2_tied");
}

#[test]
fn qwen2_sliding_window_from_max_window_layers() {
    check_full_forward("qwen2_window");
}

#[test]
fn qwen3_head_norms_and_independent_head_dim() {
    check_full_forward("qwen3");
}

#[test]
fn qwen3_tied_with_biases_and_sliding_window_everywhere() {
    check_full_forward("qwen3_tied_bias_window");
}

#[test]
fn mistral_sliding_window() {
    check_full_forward("mistral_window");
}

#[test]
fn mistral_without_sliding_window() {
    check_full_forward("mistral_no_window");
}

/// Row 0 of the fixture decoded as a 5-token prompt, a 3-token chunk (queries that must not see
/// each other's future while the cache holds the prompt), then one token at a time must give
/// the logits of the full forward pass.
fn check_kv_cache(name: &str) {
    let dir = fixture(name);
    let device = test_device();
    let model = HfModel::load(&dir, &device).unwrap().model;
    let exp = expected(&dir);
    let row: Vec<i64> = exp.ids[..exp.seq].to_vec();
    let seq = row.len();
    let full_ids = Tensor::<2, Int>::from_data(TensorData::new(row.clone(), [1, seq]), &device);
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
    let full = logits_of(model.forward(full_ids, positions, None));

    let mut cache = Default::default();
    let mut pieces = Vec::new();
    let (prompt, chunk) = (5, 3);
    let chunks = [&row[..prompt], &row[prompt..prompt + chunk]]
        .into_iter()
        .chain(row[prompt + chunk..].chunks(1));
    for chunk in chunks {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(chunk.to_vec(), [1, chunk.len()]), &device);
        pieces.extend(logits_of(model.forward_cached(ids, &[], &mut cache)));
    }
    let diff = full
        .iter()
        .zip(&pieces)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(full.len(), pieces.len());
    assert!(
        diff <= TOLERANCE,
        "{name}: cached vs full max |Δlogit| = {diff:e}"
    );
}

#[test]
fn kv_cache_matches_full_forward_gqa() {
    check_kv_cache("tied_gqa");
}

#[test]
fn kv_cache_matches_full_forward_llama3() {
    check_kv_cache("llama3_rope");
}

#[test]
fn kv_cache_matches_full_forward_of_every_family() {
    for name in [
        "qwen2_tied",
        "qwen2_window",
        "qwen3",
        "qwen3_tied_bias_window",
        "mistral_window",
    ] {
        check_kv_cache(name);
    }
}

/// Greedy generation through the KV cache picks, at every step, the argmax of a full forward
/// pass over everything so far.
#[test]
fn greedy_generation_follows_full_forward_argmax() {
    use feinschliff_model::generate::{BurnDecoder, Sampling, generate};
    let device = test_device();
    let model = HfModel::load(&fixture("tied_gqa"), &device).unwrap().model;
    let prompt = [5u32, 17, 42, 8];
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let mut decoder = BurnDecoder::new(&model, &device);
    let generated = generate(&mut decoder, &prompt, &[], 10, greedy, |_| Ok(())).unwrap();
    assert_eq!(generated.len(), 10);
    let mut sequence: Vec<i64> = prompt.iter().map(|&id| i64::from(id)).collect();
    for &token in &generated {
        let len = sequence.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(sequence.clone(), [1, len]), &device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).reshape([1, len]);
        let logits = logits_of(model.forward(ids, positions, None));
        let last = &logits[(len - 1) * logits.len() / len..];
        let best = last
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if *v > last[b] { i } else { b });
        assert_eq!(token as usize, best, "step {}", len - prompt.len());
        sequence.push(i64::from(token));
    }
}

/// Prompts of different lengths generated together (left-padded into one batch, rows leaving
/// the batch as they end) give each prompt the tokens it gets alone: greedy and sampled, with
/// one row ending early at an EOS id, on fixtures with GQA, Llama 3 RoPE, q/k norms, biases
/// and sliding windows.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    use feinschliff_model::generate::BurnDecoder;
    let device = test_device();
    for name in [
        "tied_gqa",
        "llama3_rope",
        "qwen3_tied_bias_window",
        "mistral_window",
    ] {
        let model = HfModel::load(&fixture(name), &device).unwrap().model;
        assert_batched_generation_equals_alone(name, || {
            Box::new(BurnDecoder::new(&model, &device))
        });
    }
}

/// A bf16 checkpoint loaded into a bf16 base (its stored values taken as they are, without an
/// f32 temporary) holds bf16 tensors equal to the f32 load cast to bf16.
#[test]
fn a_bf16_checkpoint_loads_into_a_bf16_base_as_stored() {
    use burn::tensor::DType;
    use feinschliff_model::linear::BaseStorage;

    let dir = fixture("bf16_sharded");
    let device = test_device();
    let storage = BaseStorage {
        dtype: DType::BF16,
        ..BaseStorage::default()
    };
    let bf16 = HfModel::load_as(&dir, storage, &device).unwrap().model;
    let f32 = HfModel::load(&dir, &device).unwrap().model;
    let pairs = [
        (bf16.model.embed_tokens.val(), f32.model.embed_tokens.val()),
        (bf16.head(), f32.head()),
        (
            bf16.projections()[0].1.weight.as_ref().unwrap().val(),
            f32.projections()[0].1.weight.as_ref().unwrap().val(),
        ),
    ];
    for (ours, reference) in pairs {
        assert_eq!(ours.dtype(), DType::BF16);
        let ours: Vec<f32> = ours.cast(DType::F32).try_into_vec_as::<f32>().unwrap();
        let want: Vec<f32> = reference.try_into_vec_as::<f32>().unwrap();
        assert_eq!(ours, want);
    }
}
