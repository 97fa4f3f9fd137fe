//! End-to-end tests: the built `feinschliff` binary run as a user runs it, on the tiny
//! fixture model with a tokenizer (`tests/fixtures/llama/tied_gqa`), with the numbers
//! transformers computed for the same model and data (`eval_expected.json`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny_model() -> PathBuf {
    fixtures().join("llama/tied_gqa")
}

fn feinschliff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .args(args)
        .output()
        .expect("run feinschliff")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn eval_matches_transformers() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(tiny_model().join("eval_expected.json")).unwrap(),
    )
    .unwrap();
    let data = fixtures().join("eval_sample.jsonl");
    for case in expected["evals"].as_array().unwrap() {
        let max_len = case["max_len"].as_u64().unwrap().to_string();
        let output = feinschliff(&[
            "eval",
            "--model",
            tiny_model().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--max-len",
            &max_len,
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let ours: Value =
            serde_json::from_str(stdout(&output).trim()).expect("one JSON object on stdout");
        let (a, b) = (
            ours["loss"].as_f64().unwrap(),
            case["loss"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "max_len {max_len}: loss {a} vs transformers {b}"
        );
        assert_eq!(ours["tokens"], case["tokens"], "max_len {max_len}");
        assert_eq!(ours["records"], case["records"], "max_len {max_len}");
    }
}

/// `eval` and `generate` take a GGUF file as `--model`: the same loss as on its import (the
/// kept Q8_0 blocks hold the values the import dequantizes to), and a greedy answer of as many
/// tokens as asked (the model is random: it never says EOS).
#[test]
fn eval_and_generate_run_on_a_gguf_file() {
    let gguf = fixtures().join("gguf/tiny_llama.gguf");
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported");
    let import = feinschliff(&[
        "import-gguf",
        gguf.to_str().unwrap(),
        imported.to_str().unwrap(),
    ]);
    assert!(import.status.success(), "{}", stderr(&import));
    let loss = |model: &Path| {
        let mut args = eval_args(model);
        args.push("--json".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = feinschliff(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let report: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        report["loss"].as_f64().unwrap()
    };
    let (on_gguf, on_import) = (loss(&gguf), loss(&imported));
    assert!(
        (on_gguf - on_import).abs() <= 1e-5 * on_import.abs(),
        "{on_gguf} against {on_import}"
    );
    let args = [
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--prompt",
        "Der Antrag",
    ];
    let output = feinschliff(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("decode: 127 tokens"), "{err}");
}

#[test]
fn generate_greedy_is_repeatable_and_chat_works() {
    let model = tiny_model();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--max-new-tokens",
            "12",
        ];
        args.extend_from_slice(extra);
        let output = feinschliff(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let first = run(&["--prompt", "Der Antrag"]);
    assert_eq!(first, run(&["--prompt", "Der Antrag"]));
    let sampled = run(&[
        "--prompt",
        "Der Antrag",
        "--temperature",
        "1.5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
    assert_eq!(
        sampled,
        run(&[
            "--prompt",
            "Der Antrag",
            "--temperature",
            "1.5",
            "--top-p",
            "0.9",
            "--seed",
            "3"
        ])
    );
    run(&["--prompt", "Wie beantrage ich Kindergeld?", "--chat"]);
}

/// `--prompts-file` (plain lines and JSONL) answers every prompt in file order, in batches,
/// with the text `--prompt` gives for it alone; a JSONL line without a prompt is named.
#[test]
fn generate_answers_a_prompts_file_in_batches() {
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let prompts = ["Der Antrag", "Hallo", "Wie beantrage ich Kindergeld?"];
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", model, "--max-new-tokens", "12"];
        args.extend_from_slice(extra);
        let output = feinschliff(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            generate(&["--prompt", p])
                .trim_end_matches('\n')
                .to_string()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("prompts.txt");
    std::fs::write(
        &plain,
        format!("{}\n\n{}\r\n{}\n", prompts[0], prompts[1], prompts[2]),
    )
    .unwrap();
    let jsonl = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|p| serde_json::json!({ "prompt": p, "id": 1 }).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    for (file, batch) in [(&plain, "2"), (&jsonl, "8")] {
        let file = file.to_str().unwrap();
        let answers: Vec<Value> = generate(&["--prompts-file", file, "--batch-size", batch])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), prompts.len());
        for ((answer, prompt), text) in answers.iter().zip(prompts).zip(&alone) {
            assert_eq!(answer["prompt"], prompt);
            assert_eq!(answer["completion"].as_str().unwrap(), text, "{prompt}");
            assert!(answer["new_tokens"].as_u64().unwrap() >= 1);
        }
    }
    std::fs::write(&jsonl, "{\"prompt\": \"Hallo\"}\n{\"text\": \"Hallo\"}\n").unwrap();
    assert_clean_error(
        &[
            "generate",
            "--model",
            model,
            "--prompts-file",
            jsonl.to_str().unwrap(),
        ],
        &["prompts.jsonl:2", "no `prompt` string"],
    );
}

/// A copy of the tiny model that a test may damage.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// One tensor of a safetensors file: name, dtype, shape, bytes.
type TensorEntry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `model.safetensors` with `edit` applied to its list of tensors.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<TensorEntry>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, out).unwrap();
}

/// Applies `edit` to the (name, dtype, shape, bytes) of tensor `name` of `model.safetensors`.
fn edit_tensor(dir: &Path, name: &str, edit: impl FnOnce(&mut TensorEntry)) {
    rewrite_weights(dir, |tensors| {
        edit(tensors.iter_mut().find(|t| t.0 == name).unwrap())
    });
}

/// Runs `eval` on a damaged model and checks the error: exit ≠ 0, one line, no panic, and it
/// contains every `expected` fragment.
fn assert_clean_error(args: &[&str], expected: &[&str]) {
    let output = feinschliff(args);
    let err = stderr(&output);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    for fragment in expected {
        assert!(
            err.contains(fragment),
            "{args:?}: `{fragment}` not in: {err}"
        );
    }
}

fn eval_args(dir: &Path) -> Vec<String> {
    let data = fixtures().join("eval_sample.jsonl");
    [
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn check_damaged(damage: impl FnOnce(&Path), expected: &[&str]) {
    let dir = model_copy();
    damage(dir.path());
    let args = eval_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_clean_error(&args, expected);
}

#[test]
fn truncated_weights_are_rejected() {
    check_damaged(
        |dir| {
            let path = dir.join("model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        },
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn non_safetensors_file_is_rejected() {
    check_damaged(
        |dir| std::fs::write(dir.join("model.safetensors"), b"PK\x03\x04 this is a zip").unwrap(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn wrong_shape_names_the_tensor() {
    check_damaged(
        |dir| edit_tensor(dir, "model.layers.1.mlp.up_proj.weight", |t| t.2.reverse()),
        &[
            "model.safetensors",
            "model.layers.1.mlp.up_proj.weight",
            "shape",
        ],
    );
}

#[test]
fn unused_tensor_is_an_error() {
    check_damaged(
        |dir| {
            rewrite_weights(dir, |tensors| {
                tensors.push((
                    "model.layers.9.extra.weight".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            })
        },
        &["model.layers.9.extra.weight", "not used"],
    );
}

#[test]
fn missing_tensor_is_an_error() {
    check_damaged(
        |dir| {
            rewrite_weights(dir, |tensors| {
                tensors.retain(|t| t.0 != "model.norm.weight")
            })
        },
        &["model.norm.weight", "missing"],
    );
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    check_damaged(
        |dir| edit_tensor(dir, "model.norm.weight", |t| t.1 = safetensors::Dtype::I32),
        &["model.norm.weight", "I32"],
    );
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn config_errors_name_the_key() {
    check_damaged(
        |dir| edit_config(dir, |c| drop(c.remove("hidden_size"))),
        &["config.json", "`hidden_size`"],
    );
    check_damaged(
        |dir| edit_config(dir, |c| drop(c.insert("model_type".into(), "gpt2".into()))),
        &["config.json", "`model_type`", "gpt2"],
    );
    check_damaged(
        |dir| {
            edit_config(dir, |c| {
                drop(c.insert("num_hidden_layers".into(), "two".into()))
            })
        },
        &["config.json", "`num_hidden_layers`"],
    );
    check_damaged(
        |dir| std::fs::write(dir.join("config.json"), "{").unwrap(),
        &["config.json", "invalid JSON"],
    );
}

#[test]
fn missing_tokenizer_and_missing_data_are_named() {
    check_damaged(
        |dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap(),
        &["tokenizer.json", "not found"],
    );
    let dir = model_copy();
    assert_clean_error(
        &[
            "eval",
            "--model",
            dir.path().to_str().unwrap(),
            "--data",
            "/nonexistent/valid.jsonl",
        ],
        &["/nonexistent/valid.jsonl"],
    );
}

#[test]
fn bad_data_line_is_named() {
    let dir = model_copy();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"gut\"}\n{\"txt\": \"schlecht\"}\n").unwrap();
    assert_clean_error(
        &[
            "eval",
            "--model",
            dir.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        &["data.jsonl:2", "missing field `text`"],
    );
}

#[test]
fn sharded_index_must_match_the_shards() {
    let sharded = fixtures().join("llama/bf16_sharded");
    let copy = |edit: &dyn Fn(&mut Value)| {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&sharded).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tiny_model().join(file), dir.path().join(file)).unwrap();
        }
        let index_path = dir.path().join("model.safetensors.index.json");
        let mut index: Value =
            serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
        edit(&mut index);
        std::fs::write(&index_path, index.to_string()).unwrap();
        dir
    };
    let map = |index: &mut Value| index["weight_map"].as_object_mut().unwrap().clone();
    // A tensor listed under the wrong shard.
    let dir = copy(&|index| {
        let mut weight_map = map(index);
        let (name, shard) = weight_map
            .iter()
            .next()
            .map(|(n, s)| (n.clone(), s.clone()))
            .unwrap();
        let other = weight_map.values().find(|s| **s != shard).unwrap().clone();
        weight_map.insert(name, other);
        index["weight_map"] = Value::Object(weight_map);
    });
    let args = eval_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_clean_error(&args, &["model.safetensors.index.json", "is listed in"]);
    // A shard that does not exist.
    let dir = copy(&|index| {
        let mut weight_map = map(index);
        let (_, shard) = weight_map.iter_mut().next().unwrap();
        *shard = "model-00009-of-00009.safetensors".into();
        index["weight_map"] = Value::Object(weight_map);
    });
    let args = eval_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_clean_error(&args, &["model-00009-of-00009.safetensors"]);
}

/// Runs `import-gguf` on damaged bytes of the tiny GGUF: a clean one-line error, and nothing
/// under the output's name or beside it.
fn check_import_fails(damage: impl FnOnce(&mut Vec<u8>), expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixtures().join("gguf/tiny_llama.gguf")).unwrap();
    damage(&mut bytes);
    let gguf = dir.path().join("model.gguf");
    std::fs::write(&gguf, &bytes).unwrap();
    let out = dir.path().join("out/model");
    assert_clean_error(
        &["import-gguf", gguf.to_str().unwrap(), out.to_str().unwrap()],
        expected,
    );
    assert!(!out.exists(), "a failed import left {}", out.display());
    if let Ok(entries) = std::fs::read_dir(dir.path().join("out")) {
        assert_eq!(
            entries.count(),
            0,
            "a failed import left files beside the output"
        );
    }
}

#[test]
fn import_gguf_rejects_broken_files() {
    check_import_fails(|b| b.truncate(b.len() / 2), &["model.gguf", "truncated"]);
    check_import_fails(
        |b| b[..4].copy_from_slice(b"GGJT"),
        &["model.gguf", "not a GGUF file"],
    );
    check_import_fails(
        |b| {
            let at = b.windows(5).position(|w| w == b"llama").unwrap();
            b[at..at + 5].copy_from_slice(b"bloom");
        },
        &["model.gguf", "architecture `bloom` is not supported"],
    );
    check_import_fails(
        |b| {
            let key = b"tokenizer.ggml.model";
            let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
            b[at..at + 4].copy_from_slice(b"bert");
        },
        &["model.gguf", "tokenizer model `bert`"],
    );
}

#[test]
fn import_gguf_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("taken");
    std::fs::write(&out, "user data").unwrap();
    let gguf = fixtures().join("gguf/tiny_llama.gguf");
    assert_clean_error(
        &["import-gguf", gguf.to_str().unwrap(), out.to_str().unwrap()],
        &["taken", "already exists"],
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "user data");
}

#[test]
fn import_gguf_then_eval_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let gguf = fixtures().join("gguf/tiny_llama.gguf");
    let output = feinschliff(&[
        "import-gguf",
        gguf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("tensors"), "{}", stdout(&output));
    let data = fixtures().join("eval_sample.jsonl");
    let output = feinschliff(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert!(report["loss"].as_f64().unwrap().is_finite());
    let output = feinschliff(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "Hallo",
        "--chat",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}
