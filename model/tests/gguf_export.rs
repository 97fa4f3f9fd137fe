//! GGUF export: the Q8_0/Q4_0/Q5_0/Q5_1 encoders (and their decoding) bit for bit against the `gguf` Python package
//! (`scripts/make_gguf_quant_fixture.py`), merged models through our own reader and importer
//! back to the same tensors, the adapter format llama.cpp reads, and refusals.

mod common;
use common::test_device;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Distribution, Tensor};
use feinschliff_model::config::LlamaConfig;
use feinschliff_model::io::gguf::adapter::write_adapter_gguf;
use feinschliff_model::io::gguf::dequant::{GgmlType, dequantize};
use feinschliff_model::io::gguf::export::write_model_gguf;
use feinschliff_model::io::gguf::file_type::GgufFileType;
use feinschliff_model::io::gguf::import::import_gguf;
use feinschliff_model::io::gguf::quantize::quantize;
use feinschliff_model::io::gguf::{GgufFile, Value};
use feinschliff_model::io::hf::HfModel;
use feinschliff_model::io::safetensors_out::StoreDtype;
use feinschliff_model::lora::{LoraAdapter, LoraSpec};
use safetensors::SafeTensors;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// name → (shape, raw bytes) of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

#[test]
fn quantizers_equal_the_gguf_package_bit_for_bit() {
    let fixture = tensors(&root().join("tests/fixtures/gguf/quantize_expected.safetensors"));
    let (shape, raw) = &fixture["input"];
    let input: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (name, ty) in [
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q5_0", GgmlType::Q5_0),
        ("q5_1", GgmlType::Q5_1),
    ] {
        let ours = quantize(ty, &input, shape[1]).unwrap();
        assert_eq!(ours.len(), fixture[name].1.len(), "{name}");
        for (row, (a, b)) in ours
            .chunks(ours.len() / shape[0])
            .zip(fixture[name].1.chunks(ours.len() / shape[0]))
            .enumerate()
        {
            assert_eq!(a, b, "{name}: row {row} differs from gguf.quants.quantize");
        }
        let theirs: Vec<f32> = fixture[&format!("{name}_dequantized")]
            .1
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let back = dequantize(ty, &ours);
        assert!(
            back.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: our dequantization differs from gguf.quants.dequantize"
        );
    }
}

/// A copy of fixture `name` with the tokenizer files of `tied_gqa` where it has none.
fn model_dir(name: &str, temp: &Path) -> PathBuf {
    let dir = temp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let source = root().join("tests/fixtures/llama").join(name);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        if !dir.join(file).exists() {
            let from = root().join("tests/fixtures/llama/tied_gqa").join(file);
            std::fs::copy(from, dir.join(file)).unwrap();
        }
    }
    dir
}

#[test]
fn f32_exports_import_back_to_the_same_tensors() {
    let temp = tempfile::tempdir().unwrap();
    let device = test_device();
    // Llama (q/k permuted, tied), Llama 3 RoPE (rope_freqs), Qwen3 (q/k norms, untied), Qwen2.
    for name in ["tied_gqa", "llama3_rope", "qwen3", "qwen2_tied"] {
        let dir = model_dir(name, temp.path());
        let hf = HfModel::load(&dir, &device).unwrap();
        let gguf = temp.path().join(format!("{name}.gguf"));
        write_model_gguf(&hf.model, &hf.config, &dir, name, &gguf, GgufFileType::F32).unwrap();
        let file = GgufFile::open(&gguf).unwrap();
        assert_eq!(
            file.tensors.contains_key("rope_freqs.weight"),
            name == "llama3_rope"
        );
        let back = temp.path().join(format!("{name}.imported"));
        import_gguf(&gguf, &back, StoreDtype::F32).unwrap();
        let (ours, original) = (
            tensors(&back.join("model.safetensors")),
            tensors(&dir.join("model.safetensors")),
        );
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            original.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (key, value) in &original {
            assert!(
                ours[key] == *value,
                "{name}: {key} differs after export and import"
            );
        }
        let config = |d: &Path| LlamaConfig::from_file(&d.join("config.json")).unwrap();
        let (a, b) = (config(&back), config(&dir));
        assert_eq!(a.rope.theta, b.rope.theta, "{name}");
        assert_eq!(a.rope.scaling, b.rope.scaling, "{name}");
        assert_eq!(
            (
                a.num_key_value_heads,
                a.head_dim,
                a.tie_word_embeddings,
                a.qk_norm
            ),
            (
                b.num_key_value_heads,
                b.head_dim,
                b.tie_word_embeddings,
                b.qk_norm
            ),
            "{name}"
        );
    }
}

#[test]
fn quantized_exports_store_norms_in_f32_and_the_output_above_4_bits() {
    let temp = tempfile::tempdir().unwrap();
    let dir = root().join("tests/fixtures/llama/tied_gqa");
    let hf = HfModel::load(&dir, &test_device()).unwrap();
    let out = temp.path().join("q4.gguf");
    let summary =
        write_model_gguf(&hf.model, &hf.config, &dir, "t", &out, GgufFileType::Q4_0).unwrap();
    let types: BTreeMap<String, GgmlType> = summary.tensors.into_iter().collect();
    assert_eq!(types["token_embd.weight"], GgmlType::Q8_0); // tied: the output projection
    assert_eq!(types["blk.0.attn_q.weight"], GgmlType::Q4_0);
    assert_eq!(types["blk.0.attn_norm.weight"], GgmlType::F32);
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.metadata["general.file_type"], Value::Uint(2));
    assert_eq!(
        file.metadata["tokenizer.ggml.pre"],
        Value::String("gpt-2".into())
    );
    assert_eq!(file.metadata["llama.context_length"], Value::Uint(128));
    // Dequantized Q4_0 stays within a step of the weights (q rows permuted: compare v).
    let v = file.tensor_f32("blk.0.attn_v.weight").unwrap();
    let original = hf.model.model.layers[0]
        .self_attn
        .v_proj
        .dense_weight(&test_device())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let worst = v
        .iter()
        .zip(&original)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = original.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        worst <= scale / 8.0,
        "Q4_0 error {worst} for weights up to {scale}"
    );
}

#[test]
fn adapters_are_written_as_llama_cpp_reads_them() {
    let temp = tempfile::tempdir().unwrap();
    let device = test_device();
    let dir = root().join("tests/fixtures/llama/tied_gqa");
    let mut hf = HfModel::load(&dir, &device).unwrap();
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        layers_to_transform: None,
        use_rslora: true,
        use_dora: false,
    };
    let mut pairs = BTreeMap::new();
    for (path, proj) in hf.model.projections_mut() {
        if path.ends_with("q_proj") || path.ends_with("v_proj") {
            let [out, inp] = proj.dims();
            let a = Tensor::random([4, inp], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::random([out, 4], Distribution::Normal(0.0, 1.0), &device);
            pairs.insert(path.clone(), (a.clone(), b.clone()));
            proj.lora = Some(LoraAdapter::from_tensors(&path, a, b, None, &spec, &device));
        }
    }
    let out = temp.path().join("adapter.gguf");
    let written = write_adapter_gguf(&hf.model, &hf.config, &spec, &out, GgmlType::F32).unwrap();
    assert_eq!(written.tensors.len(), 8); // 2 layers × 2 modules × (A, B)
    let file = GgufFile::open(&out).unwrap();
    let text = |k: &str| file.metadata[k].clone();
    assert_eq!(text("general.type"), Value::String("adapter".into()));
    assert_eq!(text("adapter.type"), Value::String("lora".into()));
    assert_eq!(text("general.architecture"), Value::String("llama".into()));
    let Value::Float(alpha) = text("adapter.lora.alpha") else {
        panic!()
    };
    assert!((alpha / 4.0 - spec.scaling()).abs() < 1e-6, "alpha {alpha}");
    let values = |t: &Tensor<2>| t.clone().into_data().try_to_vec::<f32>().unwrap();
    let (a, b) = &pairs["model.layers.1.self_attn.q_proj"];
    assert_eq!(file.tensors["blk.1.attn_q.weight.lora_a"].dims, [32, 4]); // ggml: [in, r]
    assert_eq!(file.tensors["blk.1.attn_q.weight.lora_b"].dims, [4, 32]); // ggml: [r, out]
    assert_eq!(
        file.tensor_f32("blk.1.attn_q.weight.lora_a").unwrap(),
        values(a)
    );
    // B's rows in llama.cpp's q order: GGUF row 1 of head 0 is HF row head_dim / 2 = 4.
    let gguf_b = file.tensor_f32("blk.1.attn_q.weight.lora_b").unwrap();
    assert_eq!(gguf_b[4..8], values(b)[16..20]);
    assert_ne!(gguf_b, values(b));
    let (_, b) = &pairs["model.layers.0.self_attn.v_proj"];
    assert_eq!(
        file.tensor_f32("blk.0.attn_v.weight.lora_b").unwrap(),
        values(b)
    ); // v: not permuted
}

#[test]
fn what_llama_cpp_cannot_run_is_refused_naming_it() {
    let temp = tempfile::tempdir().unwrap();
    let device = test_device();
    let dir = model_dir("qwen3_tied_bias_window", temp.path());
    let hf = HfModel::load(&dir, &device).unwrap();
    let out = temp.path().join("x.gguf");
    let error =
        write_model_gguf(&hf.model, &hf.config, &dir, "x", &out, GgufFileType::F32).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("key `attention_bias` true (q/k/v biases): llama.cpp's `qwen3`"),
        "{error}"
    );
    assert!(!out.exists());
    assert_eq!(
        "q4_k_s".parse::<GgufFileType>().unwrap_err().to_string(),
        "`q4_k_s` is not one of f32, f16, bf16, q8_0, q4_0, q4_k, q4_k_m"
    );
}

#[test]
fn sentencepiece_vocabularies_round_trip_through_their_scores() {
    // A SentencePiece-style vocabulary (byte-fallback BPE), as import-gguf writes one.
    let temp = tempfile::tempdir().unwrap();
    let device = test_device();
    let spm = temp.path().join("spm");
    import_gguf(
        &root().join("tests/fixtures/gguf/tiny_spm.gguf"),
        &spm,
        StoreDtype::F32,
    )
    .unwrap();
    let hf = HfModel::load(&spm, &device).unwrap();
    let out = temp.path().join("spm.gguf");
    write_model_gguf(&hf.model, &hf.config, &spm, "x", &out, GgufFileType::F32).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let meta = &file.metadata;
    assert_eq!(meta["tokenizer.ggml.model"], Value::String("llama".into()));
    assert_eq!(meta["tokenizer.ggml.add_space_prefix"], Value::Bool(true));
    assert!(!meta.contains_key("tokenizer.ggml.merges"));
    let Value::Array(types) = &meta["tokenizer.ggml.token_type"] else {
        panic!("token_type is not an array")
    };
    assert!(types.contains(&Value::Int(6)), "no BYTE tokens"); // <0x00>…<0xFF>
    // Importing the export recovers the merges from the scores: the same list, in order.
    let back = temp.path().join("back");
    import_gguf(&out, &back, StoreDtype::F32).unwrap();
    let merges = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["model"]["merges"].clone()
    };
    assert_eq!(merges(&back), merges(&spm));
    assert!(merges(&spm).as_array().unwrap().len() > 10);
}
