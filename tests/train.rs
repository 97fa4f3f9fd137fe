//! End-to-end tests of `feinschliff train` and `export adapter` on the tiny fixture model
//! (`configs/tiny.toml`): exact resume, PEFT adapter export and re-load, refusal to mix runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use feinschliff_data::cache::CacheEntry;
use feinschliff_data::format::Example;
use feinschliff_data::prepared::{Prepared, SplitStats};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn feinschliff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run feinschliff")
}

fn ok(args: &[&str]) -> String {
    let output = feinschliff(args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(args: &[&str], expected: &str) {
    let output = feinschliff(args);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(expected), "`{expected}` not in: {err}");
}

/// Trains `configs/tiny.toml` into `run_dir` with extra `--set`s; returns the summary.
fn train(run_dir: &Path, sets: &[&str], resume: bool) -> Value {
    let output = train_output(run_dir, sets, resume);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{sets:?}: {err}");
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim())
        .expect("a JSON summary on stdout")
}

/// The process output of [`train`].
fn train_output(run_dir: &Path, sets: &[&str], resume: bool) -> Output {
    let run = format!("output.run_dir={:?}", run_dir.display().to_string());
    let mut args = vec![
        "train",
        "--config",
        "configs/tiny.toml",
        "--set",
        &run,
        "--set",
        "train.keep_last=10",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let run_dir_text = run_dir.display().to_string();
    if resume {
        args.extend(["--resume", &run_dir_text]);
    }
    feinschliff(&args)
}

fn step_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

fn adapter_bytes(run_dir: &Path, step: usize) -> Vec<u8> {
    std::fs::read(run_dir.join(format!(
        "checkpoints/step-{step:06}/adapter_model.safetensors"
    )))
    .unwrap()
}

/// Copies the checkpoints `steps` of run `from` into run `to`: an interrupted run that kept them.
fn copy_checkpoints(from: &Path, to: &Path, steps: &[usize]) {
    for step in steps {
        let name = format!("checkpoints/step-{step:06}");
        std::fs::create_dir_all(to.join(&name)).unwrap();
        for entry in std::fs::read_dir(from.join(&name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(&name).join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    check_exact_resume(&[]);
}

/// Qwen2 (biases, a sliding window shorter than the rows), Qwen3 (q/k norms) and Mistral
/// (sliding window) train and resume exactly like the Llama fixture.
#[test]
fn every_family_trains_and_resumes_exactly() {
    for name in ["qwen2_window", "qwen3", "mistral_window"] {
        let model = format!("model.path=\"tests/fixtures/llama/{name}\"");
        check_exact_resume(&[&model, "data.max_len=32"]);
    }
}

/// Resuming a finished run is refused before anything is computed (a DPO run would otherwise
/// score its reference first).
#[test]
fn resuming_a_finished_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &DPO, false);
    let run_set = format!("output.run_dir={:?}", run.display().to_string());
    let mut args = vec!["train", "--config", "configs/tiny.toml", "--set", &run_set];
    for set in &DPO {
        args.extend(["--set", set]);
    }
    let run_text = run.display().to_string();
    args.extend(["--resume", &run_text]);
    fails(&args, "already at step 6 of 6");
}

/// A checkpoint records the dtype the frozen base multiplied in (what `auto` chose at the
/// start), and a resumed run keeps it rather than probing again.
#[test]
fn a_resumed_run_keeps_the_products_dtype_its_checkpoint_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["train.max_steps=2"], false);
    let state = std::fs::read_to_string(run.join("checkpoints/step-000002/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["base_products"], "f32", "{state}");
    let output = train_output(&run, &["train.max_steps=4"], true);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("base products: f32 (as the run's checkpoint recorded)"),
        "{err}"
    );
}

/// DoRA adapters (with their magnitudes in the checkpoint) resume exactly.
#[test]
fn dora_runs_resume_exactly() {
    check_exact_resume(&["lora.use_dora=true"]);
}

/// The settings of a DPO run on the TRL fixture's pairs.
const DPO: [&str; 7] = [
    "data.train=\"train/tests/fixtures/dpo/pairs.jsonl\"",
    "data.valid=\"train/tests/fixtures/dpo/pairs.jsonl\"",
    "data.format=\"preference\"",
    "data.packing=false",
    "data.max_len=128",
    "train.objective=\"dpo\"",
    "train.generate_prompts=[]",
];

/// A DPO run resumes exactly (the reference's log-probabilities are recomputed by the resumed
/// process, which has only the checkpoints), and training raises the reward accuracy on the
/// pairs it sees.
#[test]
fn dpo_runs_resume_exactly_and_learn_the_preference() {
    check_exact_resume(&DPO);
    check_exact_resume_with(&DPO, &["reference_logps.json"]);
    let dir = tempfile::tempdir().unwrap();
    let summary = train(&dir.path().join("run"), &DPO, false);
    let evals: Vec<Value> = std::fs::read_to_string(dir.path().join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("eval_reward_accuracy").is_some())
        .collect();
    let first = &evals[0];
    let last = evals.last().unwrap();
    assert_eq!(first["eval_loss"].as_f64().unwrap(), 2f64.ln(), "{first}");
    assert_eq!(first["eval_reward_accuracy"], 0.0);
    assert!(
        last["eval_reward_accuracy"].as_f64().unwrap() > 0.5,
        "{last}"
    );
    assert!(last["eval_reward_margin"].as_f64().unwrap() > 0.0, "{last}");
    assert!(summary["final_eval_loss"].as_f64().unwrap() < 2f64.ln());
}

/// The loss of `feinschliff eval` with `args` on the eval fixture (max-len 16).
fn eval_loss(args: &[&str]) -> f64 {
    let mut all = vec![
        "eval",
        "--data",
        "tests/fixtures/eval_sample.jsonl",
        "--max-len",
        "16",
        "--json",
    ];
    all.extend_from_slice(args);
    serde_json::from_str::<Value>(ok(&all).trim()).unwrap()["loss"]
        .as_f64()
        .unwrap()
}

/// A run on a quantized base resumes exactly too (the base is quantized the same way on every
/// load).
#[test]
fn runs_on_a_quantized_base_resume_exactly() {
    for quant in ["q8_0", "q4_k"] {
        check_exact_resume(&[&format!("model.base_quant=\"{quant}\"")]);
    }
}

/// A GGUF file as the base (`tiny_llama.gguf`, the tiny fixture converted by llama.cpp's
/// rules, Q8_0 projections kept in their blocks): the run trains, resumes exactly, and gives
/// the losses of the same run on its import (dense f32 of the same values) within 1e-4.
#[test]
fn runs_on_a_gguf_base_resume_exactly_and_match_its_import() {
    let gguf = "model.path=\"tests/fixtures/gguf/tiny_llama.gguf\"";
    check_exact_resume(&[gguf]);
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported");
    ok(&[
        "import-gguf",
        "tests/fixtures/gguf/tiny_llama.gguf",
        imported.to_str().unwrap(),
    ]);
    let from_import = format!("model.path={:?}", imported.display().to_string());
    let losses = |run: &str, set: &str| {
        let run_dir = dir.path().join(run);
        train(&run_dir, &[set], false);
        step_losses(&run_dir)
    };
    let (on_gguf, on_import) = (losses("gguf", gguf), losses("import", &from_import));
    assert_eq!(on_gguf.len(), 6);
    for ((step, a), (_, b)) in on_gguf.iter().zip(&on_import) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {step}: {a} against {b}"
        );
    }
}

/// A run of `configs/tiny.toml` with `sets`, resumed from its step-2 checkpoint, ends with the
/// adapters and losses of the uninterrupted run.
fn check_exact_resume(sets: &[&str]) {
    check_exact_resume_with(sets, &[]);
}

/// [`check_exact_resume`] where the interrupted run also kept the files `kept` of its run
/// directory.
fn check_exact_resume_with(sets: &[&str], kept: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train(&straight, sets, false);
    // The interrupted run: only the step-2 checkpoint of the same configuration survives.
    let resumed = dir.path().join("resumed");
    copy_checkpoints(&straight, &resumed, &[2]);
    for file in kept {
        std::fs::copy(straight.join(file), resumed.join(file)).unwrap();
    }
    let summary = train(&resumed, sets, true);
    assert_eq!(summary["resumed_from"], 2);
    assert_eq!(
        adapter_bytes(&straight, 6),
        adapter_bytes(&resumed, 6),
        "adapter tensors differ after resume"
    );
    assert_eq!(adapter_bytes(&straight, 4), adapter_bytes(&resumed, 4));
    let tail = |run: &Path| {
        step_losses(run)
            .into_iter()
            .filter(|(s, _)| *s > 2)
            .collect::<Vec<_>>()
    };
    assert_eq!(tail(&straight), tail(&resumed));
    assert_eq!(tail(&straight).len(), 4);
    // The adapter moved: training did something.
    assert_ne!(adapter_bytes(&straight, 2), adapter_bytes(&straight, 6));
}

#[test]
fn exported_adapter_is_peft_shaped_and_reloads_to_the_same_loss() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let summary = train(&run, &[], false);
    let final_eval = summary["final_eval_loss"].as_f64().unwrap();
    assert!(
        final_eval < summary["initial_eval_loss"].as_f64().unwrap(),
        "eval loss did not fall: {summary}"
    );

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.matches("\"generation\"").count(),
        3,
        "samples at steps 0, 3, 6: {metrics}"
    );
    assert_eq!(metrics.matches("\"eval_loss\"").count(), 3);
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "loss.png is not a PNG"
    );
    let out = dir.path().join("adapter");
    ok(&[
        "export",
        "adapter",
        "--run",
        run.to_str().unwrap(),
        "--checkpoint",
        "last",
        "--out",
        out.to_str().unwrap(),
    ]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = tensors
        .tensor("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight")
        .unwrap();
    let b = tensors
        .tensor("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")
        .unwrap();
    assert_eq!(
        (a.shape(), b.shape()),
        (&[4usize, 32][..], &[16usize, 4][..])
    );
    assert_eq!(tensors.len(), 2 * 7 * 2);

    let eval = ok(&[
        "eval",
        "--model",
        "tests/fixtures/llama/tied_gqa",
        "--adapter",
        out.to_str().unwrap(),
        "--config",
        "configs/tiny.toml",
        "--json",
    ]);
    let loss = serde_json::from_str::<Value>(eval.trim()).unwrap()["loss"]
        .as_f64()
        .unwrap();
    assert!(
        (loss - final_eval).abs() <= 1e-6 * final_eval,
        "eval --adapter {loss} vs training's {final_eval}"
    );
    fails(
        &[
            "export",
            "adapter",
            "--run",
            run.to_str().unwrap(),
            "--checkpoint",
            "step-5",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        "no checkpoint `step-5`",
    );
}

#[test]
fn runs_are_not_mixed_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["train.max_steps=2"], false);
    let run_set = format!("output.run_dir={:?}", run.display().to_string());
    fails(
        &["train", "--config", "configs/tiny.toml", "--set", &run_set],
        "pass --resume",
    );
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "lora.r=8",
            "--resume",
            run.to_str().unwrap(),
        ],
        "different configuration",
    );
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "lora.r=0",
        ],
        "lora.r",
    );
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "train.lr=-1",
        ],
        "train.lr",
    );
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "lora.target_modules=[\"qkv\"]",
        ],
        "qkv",
    );
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "train.lrate=1",
        ],
        "lrate",
    );
}

#[test]
fn adapter_for_another_model_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["train.max_steps=1"], false);
    let adapter = run.join("checkpoints/step-000001");
    // A model of another shape (head_dim 16): same vocabulary, so give it the tiny tokenizer.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for (from, files) in [
        (
            "tests/fixtures/llama/untied_mha",
            &["config.json", "model.safetensors"][..],
        ),
        (
            "tests/fixtures/llama/tied_gqa",
            &["tokenizer.json", "tokenizer_config.json"][..],
        ),
    ] {
        for file in files {
            std::fs::copy(root().join(from).join(file), other.join(file)).unwrap();
        }
    }
    fails(
        &[
            "eval",
            "--model",
            other.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            "tests/fixtures/eval_sample.jsonl",
        ],
        "q_proj.lora_B.weight` has shape [32, 4], the model expects [64, 4]",
    );
}

/// A run on a q8_0 base merges into that base dequantized: the merged model gives the loss of
/// the adapter on the quantized base; `--base` merges into the original instead, with a
/// warning.
#[test]
fn merged_export_of_a_quantized_run_gives_the_adapters_loss_on_that_base() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(
        &run,
        &["train.max_steps=4", "model.base_quant=\"q8_0\""],
        false,
    );
    let adapter = run.join("checkpoints/step-000004");
    let base = "tests/fixtures/llama/tied_gqa";
    let adapter_args = ["--model", base, "--adapter", adapter.to_str().unwrap()];
    let on_quantized = eval_loss(&[&adapter_args[..], &["--base-quant", "q8_0"]].concat());
    let on_original = eval_loss(&adapter_args);
    assert_ne!(
        on_quantized, on_original,
        "q8_0 changed nothing: the test tests nothing"
    );
    let merged = dir.path().join("merged");
    let out = feinschliff(&[
        "export",
        "merged",
        "--run",
        run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("merged into the q8_0 base the run trained on"),
        "{stdout}"
    );
    let merged_loss = eval_loss(&["--model", merged.to_str().unwrap()]);
    assert!(
        (merged_loss - on_quantized).abs() <= 1e-5 * on_quantized,
        "merged {merged_loss} vs adapter on the q8_0 base {on_quantized}"
    );
    let onto_original = dir.path().join("onto-original");
    let out = feinschliff(&[
        "export",
        "merged",
        "--run",
        run.to_str().unwrap(),
        "--out",
        onto_original.to_str().unwrap(),
        "--base",
        base,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains("warning: merged into")
            && stderr.contains("differs"),
        "{stderr}"
    );
    let original_loss = eval_loss(&["--model", onto_original.to_str().unwrap()]);
    assert!(
        (original_loss - on_original).abs() <= 1e-5 * on_original,
        "{original_loss} vs {on_original}"
    );
}

#[test]
fn merged_export_gives_the_adapters_loss() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["train.max_steps=4"], false);
    let run_text = run.to_str().unwrap();
    let adapter = run.join("checkpoints/step-000004");
    let with_adapter = eval_loss(&[
        "--model",
        "tests/fixtures/llama/tied_gqa",
        "--adapter",
        adapter.to_str().unwrap(),
    ]);

    let merged = dir.path().join("merged");
    ok(&[
        "export",
        "merged",
        "--run",
        run_text,
        "--out",
        merged.to_str().unwrap(),
        "--max-shard-size",
        "40KB",
    ]);
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(merged.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    assert!(
        !weight_map.contains_key("lm_head.weight"),
        "a tied model must not write lm_head.weight"
    );
    assert!(
        weight_map
            .values()
            .any(|f| f == "model-00002-of-00003.safetensors"),
        "{weight_map:?}"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["rope_theta"],
        config["rope_parameters"]["rope_theta"]
    );
    assert!(
        merged.join("tokenizer.json").exists() && merged.join("generation_config.json").exists()
    );
    let merged_loss = eval_loss(&["--model", merged.to_str().unwrap()]);
    assert!(
        (merged_loss - with_adapter).abs() <= 1e-5 * with_adapter,
        "merged {merged_loss} vs adapter {with_adapter}"
    );

    let bf16 = dir.path().join("merged-bf16");
    ok(&[
        "export",
        "merged",
        "--run",
        run_text,
        "--out",
        bf16.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    let bf16_loss = eval_loss(&["--model", bf16.to_str().unwrap()]);
    assert!(
        (bf16_loss - with_adapter).abs() <= 1e-2 * with_adapter,
        "bf16 {bf16_loss} vs {with_adapter}"
    );
    fails(
        &[
            "export",
            "merged",
            "--run",
            run_text,
            "--out",
            bf16.to_str().unwrap(),
        ],
        "already exists",
    );
}

#[test]
fn sigint_and_sigterm_checkpoint_and_exit_with_128_plus_signal() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let run_set = format!("output.run_dir={:?}", run.display().to_string());
        let child = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
            .current_dir(root())
            .args(["train", "--config", "configs/tiny.toml", "--set", &run_set])
            .args([
                "--set",
                "train.max_steps=1000000",
                "--set",
                "train.eval_every=0",
                "--set",
                "data.valid=\"\"",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until training runs (metrics appear), then signal.
        let metrics = run.join("metrics.jsonl");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::read_to_string(&metrics).map_or(true, |m| m.lines().count() < 3) {
            assert!(
                std::time::Instant::now() < deadline,
                "training did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{err}");
        assert!(err.contains("--resume"), "{err}");
        let summary: Value =
            serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
        let steps = summary["steps"].as_u64().unwrap() as usize;
        assert!((3..1_000_000).contains(&steps));
        assert!(
            run.join(format!(
                "checkpoints/step-{steps:06}/adapter_model.safetensors"
            ))
            .exists()
        );
    }
}

#[test]
fn diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_set = format!("output.run_dir={:?}", run.display().to_string());
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            &run_set,
            "--set",
            "train.lr=1e30",
            "--set",
            "train.max_grad_norm=0",
            "--set",
            "train.save_every=1",
            "--set",
            "train.warmup_steps=0",
        ],
        "loss is NaN at step 2",
    );
    assert!(
        run.join("checkpoints/step-000001/adapter_model.safetensors")
            .exists()
    );
    assert!(!run.join("checkpoints/step-000002").exists());
}

/// A damage done to checkpoint step 4: the file it changes, and what the note names.
type Damage = fn(&Path) -> &'static str;

/// Cuts 100 bytes off the optimizer state.
fn truncate_optimizer(step: &Path) -> &'static str {
    let optimizer = step.join("optimizer.bpk");
    let bytes = std::fs::read(&optimizer).unwrap();
    std::fs::write(&optimizer, &bytes[..bytes.len() - 100]).unwrap();
    "optimizer.bpk"
}

/// Adds `/dev/zero` (stated as empty) to the manifest: a reader that followed the name would
/// read forever.
fn manifest_names_dev_zero(step: &Path) -> &'static str {
    let manifest = step.join("manifest.json");
    let mut entries: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    entries["/dev/zero"] = serde_json::json!({ "bytes": 0, "sha256": empty });
    std::fs::write(&manifest, entries.to_string()).unwrap();
    "manifest.json: lists `/dev/zero`"
}

#[test]
fn damaged_last_checkpoint_is_passed_over_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train(&straight, &[], false);
    let damages: [Damage; 2] = [truncate_optimizer, manifest_names_dev_zero];
    for (i, damage) in damages.into_iter().enumerate() {
        // The interrupted run kept steps 2 and 4, and step 4 was damaged afterwards.
        let resumed = dir.path().join(format!("resumed-{i}"));
        copy_checkpoints(&straight, &resumed, &[2, 4]);
        let named = damage(&resumed.join("checkpoints/step-000004"));
        let output = feinschliff(&[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            "train.keep_last=10",
            "--resume",
            resumed.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{err}");
        assert!(
            err.contains("passing over damaged checkpoint") && err.contains(named),
            "{err}"
        );
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["resumed_from"], 2);
        assert_eq!(adapter_bytes(&straight, 6), adapter_bytes(&resumed, 6));
    }
}

/// Links planted in a run directory: a `.lock` link is not followed (no file is created where
/// it points), and a `metrics.jsonl` link is refused, not replaced, its target untouched.
#[test]
fn links_planted_in_a_run_directory_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    let cases = [
        (".lock", "symbolic links"),
        ("metrics.jsonl", "symbolic link"),
    ];
    for (name, expected) in cases {
        let run = dir.path().join(format!("run{name}"));
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::symlink(&victim, run.join(name)).unwrap();
        let run_set = format!("output.run_dir={:?}", run.display().to_string());
        let output = feinschliff(&["train", "--config", "configs/tiny.toml", "--set", &run_set]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: the run succeeded");
        let named = err.contains(&format!("{name}: ")) && err.to_lowercase().contains(expected);
        assert!(named, "{name}: {err}");
        assert!(
            !victim.exists(),
            "{name}: written through to {}",
            victim.display()
        );
        assert!(
            std::fs::symlink_metadata(run.join(name))
                .unwrap()
                .is_symlink()
        );
    }
}

#[test]
fn a_run_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lock = std::fs::File::create(run.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    fails(
        &[
            "train",
            "--config",
            "configs/tiny.toml",
            "--set",
            &format!("output.run_dir={:?}", run.display().to_string()),
        ],
        "is in use by another training run",
    );
    assert!(!run.join("checkpoints").exists(), "the refused run wrote");
    drop(lock);
}

/// Replaces the one entry of the token cache in `cache` with `prepared` (a damaged entry, one
/// from an older version, or one made for another model).
fn replace_cache_entry(cache: &Path, prepared: &Prepared) {
    let entries: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let key = entries[0].file_stem().unwrap().to_str().unwrap();
    CacheEntry::new(cache, key).store(prepared).unwrap();
}

/// Cached examples the model cannot take: an empty training split (the run would divide by
/// zero) and a token id past the model's `vocab_size` (Burn's embedding lookup would panic).
/// `train` and `eval --config` refuse both with an error line naming the cause (and the cache
/// file), and the refused run leaves no run directory.
#[test]
fn cached_examples_the_model_cannot_take_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = format!(
        "data.cache_dir={:?}",
        dir.path().join("cache").display().to_string()
    );
    let run_dir = dir.path().join("run");
    let run = format!("output.run_dir={:?}", run_dir.display().to_string());
    let config = ["--config", "configs/tiny.toml", "--set", &cache];
    ok(&[&["data", "inspect"], &config[..]].concat());
    let example = |ids: Vec<u32>| Example {
        trained: ids.iter().map(|_| true).collect(),
        ids,
    };
    let stats = |examples: usize| SplitStats {
        examples,
        ..SplitStats::default()
    };
    let empty_train = Prepared {
        train: Vec::new(),
        valid: vec![example(vec![1, 5, 6])],
        train_stats: stats(0),
        valid_stats: stats(1),
    };
    let past_vocab = Prepared {
        train: vec![example(vec![1, 5, 6])],
        valid: vec![example(vec![1, 96, 7])],
        train_stats: stats(1),
        valid_stats: stats(1),
    };
    let train = [&["train"], &config[..], &["--set", &run]].concat();
    let eval = [
        &["eval", "--model", "tests/fixtures/llama/tied_gqa"],
        &config[..],
    ]
    .concat();
    let past_vocab_error = ".arrow: the cached examples (from another model, or damaged: delete the file) hold token ids up to 96 (a vocabulary of 97), but the model's vocab_size is 96";
    let cases = [
        (
            &empty_train,
            &train,
            "key `data.train`: gives no training examples",
        ),
        (&past_vocab, &train, past_vocab_error),
        (&past_vocab, &eval, past_vocab_error),
    ];
    for (prepared, args, expected) in cases {
        replace_cache_entry(&dir.path().join("cache"), prepared);
        let output = feinschliff(args);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        // Progress notes may come first; the error is the last line, and a line of its own.
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{err}");
        assert!(last.contains(expected), "`{expected}` not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !run_dir.exists(),
            "the refused run left {}",
            run_dir.display()
        );
    }
}

/// Two fresh runs on one run directory, the first slow to load (the whole law corpus to
/// tokenize with a cold cache) and the second quick, started while the first still loads.
/// The run directory is locked before anything in it is read or decided, so the second is
/// refused at once and the directory holds the first run's files only. (Before the lock came
/// first, both "succeeded": the slow run trimmed the quick run's metrics and wrote its
/// checkpoints over the quick run's.)
#[test]
fn two_fresh_runs_on_one_directory_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_set = format!("output.run_dir={:?}", run.display().to_string());
    let cache_set = format!(
        "data.cache_dir={:?}",
        dir.path().join("cache").display().to_string()
    );
    let slow = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .current_dir(root())
        .args(["train", "--config", "configs/tiny.toml", "--set", &run_set])
        .args(["--set", "data.train=\"data/corpora/de-admin/train.jsonl\""])
        .args(["--set", &cache_set, "--set", "train.max_steps=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Start the quick run once the slow one holds the lock (it creates `.lock` and locks it
    // at once, then spends seconds tokenizing), not after a fixed delay: on a busy machine the
    // slow run may not even have started after a second.
    let started = std::time::Instant::now();
    while !run.join(".lock").exists() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the slow run never locked its directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let quick = feinschliff(&["train", "--config", "configs/tiny.toml", "--set", &run_set]);
    let slow = slow.wait_with_output().unwrap();
    let quick_err = String::from_utf8_lossy(&quick.stderr);
    assert!(
        slow.status.success(),
        "{}",
        String::from_utf8_lossy(&slow.stderr)
    );
    assert!(
        !quick.status.success(),
        "both runs succeeded in one run directory"
    );
    assert!(
        quick_err.contains("is in use by another training run"),
        "{quick_err}"
    );
    let steps: Vec<u64> = step_losses(&run).iter().map(|(step, _)| *step).collect();
    assert_eq!(steps, [1], "metrics.jsonl mixes runs");
    let checkpoints = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
    assert_eq!(checkpoints, 1, "checkpoints of another run");
}

/// The step of the newest checkpoint of `run_dir`, if any.
fn newest_checkpoint(run_dir: &Path) -> Option<usize> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix("step-")?.parse().ok()
        })
        .max()
}

/// Waits until `child` ended or `run_dir` has a checkpoint newer than `before`.
fn wait_for_checkpoint(child: &mut std::process::Child, run_dir: &Path, before: Option<usize>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && newest_checkpoint(run_dir) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no new checkpoint in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `kill -9` at pseudo-random moments, resume each time: the final adapter and every step's
/// loss equal those of a run that was never interrupted. Each run is killed only after it
/// wrote a checkpoint of its own (then at a pseudo-random moment within 300 ms), so every run
/// after the first resumes from a checkpoint, and the test checks that it said so.
/// `FEINSCHLIFF_KILLS` sets how many kills (default 3; 10 for the full version).
#[test]
fn killed_and_resumed_runs_end_bit_identical() {
    let kills: usize = std::env::var("FEINSCHLIFF_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "train.max_steps=400",
        "train.save_every=1",
        "train.eval_every=100",
    ];
    let straight = dir.path().join("straight");
    train(&straight, &sets, false);
    let killed = dir.path().join("killed");
    let run_arg = format!("output.run_dir={:?}", killed.display().to_string());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let (mut runs, mut resumes, mut last_summary) = (0, 0, None);
    while runs < kills && last_summary.is_none() {
        let mut args = vec!["train", "--config", "configs/tiny.toml", "--set", &run_arg];
        for set in sets {
            args.extend(["--set", set]);
        }
        let before = newest_checkpoint(&killed);
        if before.is_some() {
            args.push("--resume");
            args.push(killed.to_str().unwrap());
        }
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
            .current_dir(root())
            .args(&args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        wait_for_checkpoint(&mut child, &killed, before);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(std::time::Duration::from_millis(state % 300));
        let stderr = || std::fs::read_to_string(&err).unwrap();
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "a run failed: {}", stderr());
                // It ended before the kill: nothing left to interrupt.
                let text = std::fs::read_to_string(&out).unwrap();
                last_summary = Some(serde_json::from_str::<Value>(&text).unwrap());
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                runs += 1;
            }
        }
        if let Some(step) = before {
            let note = format!("resuming {} at step {step}\n", killed.display());
            assert!(stderr().contains(&note), "no `{note}` in: {}", stderr());
            resumes += 1;
        }
    }
    assert!(runs > 0, "every run finished before it could be killed");
    assert!(resumes > 0, "no run resumed from a checkpoint");
    eprintln!("killed {runs} times, resumed {resumes} times, then resumed to the end");
    let summary = last_summary.unwrap_or_else(|| train(&killed, &sets, true));
    assert_eq!(summary["steps"], 400);
    assert!(
        summary["resumed_from"].as_u64().unwrap() > 0,
        "the last run did not resume: {summary}"
    );
    assert_eq!(adapter_bytes(&straight, 400), adapter_bytes(&killed, 400));
    assert_eq!(step_losses(&straight), step_losses(&killed));
    let leftovers: Vec<_> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "killed runs' temporary checkpoints: {leftovers:?}"
    );
}

/// A file-size limit (`ulimit -f`, standing in for a full disk) hit while a checkpoint is
/// written: a clear error naming the file, no partial checkpoint left, the previous checkpoint
/// intact, and resuming it later gives the uninterrupted run's adapter.
#[test]
fn a_full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train(&straight, &[], false);
    let run = dir.path().join("run");
    copy_checkpoints(&straight, &run, &[2, 4]);
    // 8 KiB per file: config.toml and metrics.jsonl fit, the adapter (20 KB) does not.
    let output = Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg(format!(
            "ulimit -f 8; exec {:?} train --config configs/tiny.toml --set train.keep_last=10 --resume {:?}",
            env!("CARGO_BIN_EXE_feinschliff"),
            run.display().to_string()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: ")
            && last.contains("step-000006")
            && last.contains("File too large"),
        "{err}"
    );
    let names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "a partial checkpoint was left: {names:?}");
    assert_eq!(adapter_bytes(&run, 4), adapter_bytes(&straight, 4));
    let summary = train(&run, &[], true);
    assert_eq!(summary["resumed_from"], 4);
    assert_eq!(adapter_bytes(&run, 6), adapter_bytes(&straight, 6));
}
