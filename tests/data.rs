//! `feinschliff data inspect` as a user runs it: trained tokens marked, counts printed, the
//! token cache filled; and every kind of bad data input stopped with a one-line error that
//! names the file and line (or record, field, key, template line), with nothing cached.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inspect(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .args([
            "data",
            "inspect",
            "--config",
            config.to_str().unwrap(),
            "--n",
            "1",
        ])
        .current_dir(root())
        .output()
        .expect("run feinschliff")
}

/// A config for the tiny fixture model over `data` with extra `[data]` lines, in `dir`.
fn config(dir: &Path, data: &str, extra: &str, model: &Path) -> PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\npath = {:?}\n[data]\ntrain = {:?}\ncache_dir = {:?}\nmax_len = 256\n{extra}\n",
            model.display().to_string(),
            data,
            dir.join("cache").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn tiny() -> PathBuf {
    root().join("tests/fixtures/llama/tied_gqa")
}

#[test]
fn inspect_marks_trained_tokens_and_fills_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chat.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Frage\"}, {\"role\": \"assistant\", \"content\": \"Antwort\"}]}\n",
    )
    .unwrap();
    let config = config(
        dir.path(),
        data.to_str().unwrap(),
        "format = \"chat\"",
        &tiny(),
    );
    let output = inspect(&config);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("<|im_start|>assistant\n[[Antwort<|im_end|>]]\n"),
        "{text}"
    );
    assert!(text.contains("train: 1 records -> 1 examples"), "{text}");
    assert!(text.contains("tokenized"), "{text}");
    let again = String::from_utf8_lossy(&inspect(&config).stdout).into_owned();
    assert!(again.contains("loaded from the token cache"), "{again}");
}

#[test]
fn bad_data_gets_a_one_line_error_and_nothing_is_cached() {
    let chat = |content: &str| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Frage\"}}, {{\"role\": \"assistant\", \"content\": {content:?}}}]}}\n"
        )
    };
    let good = chat("Antwort");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "malformed JSON line",
            format!("{good}{{\"messages\": [\n").into_bytes(),
            "format = \"chat\"",
            "data.jsonl:2: invalid JSON",
        ),
        (
            "missing field",
            format!("{good}{good}{{\"text\": \"x\"}}\n").into_bytes(),
            "format = \"chat\"",
            "data.jsonl:3: missing field `messages`",
        ),
        (
            "missing message field",
            b"{\"messages\": [{\"role\": \"user\"}]}\n".to_vec(),
            "format = \"chat\"",
            "data.jsonl:1: message 1: missing field `content`",
        ),
        (
            "non-UTF-8",
            b"{\"text\": \"Stra\xdfe\"}\n".to_vec(),
            "",
            "data.jsonl:1: not UTF-8",
        ),
        (
            "unknown role",
            b"{\"messages\": [{\"role\": \"human\", \"content\": \"x\"}]}\n".to_vec(),
            "format = \"chat\"",
            "data.jsonl:1: message 1: role `human` is not one of system, user, assistant; map it with data.roles",
        ),
        (
            "empty split",
            b"\n\n".to_vec(),
            "",
            "key `data.train`: no examples (0 records read",
        ),
        (
            "everything too long",
            chat(&"sehr lang ".repeat(40)).into_bytes(),
            "format = \"chat\"",
            "key `data.train`: no examples (1 records read, 1 dropped",
        ),
        (
            "alpaca without output",
            b"{\"instruction\": \"x\"}\n".to_vec(),
            "format = \"alpaca\"",
            "data.jsonl:1: missing field `output`",
        ),
        (
            "unknown data key",
            good.clone().into_bytes(),
            "formt = \"chat\"",
            "unknown field `formt`",
        ),
    ];
    for (name, content, extra, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.jsonl");
        std::fs::write(&data, content).unwrap();
        let output = inspect(&config(dir.path(), data.to_str().unwrap(), extra, &tiny()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: succeeded");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let cached = std::fs::read_dir(dir.path().join("cache")).map_or(0, |d| d.count());
        assert_eq!(cached, 0, "{name}: something was cached");
    }
}

#[test]
fn chat_template_syntax_error_names_the_template_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(tiny().join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    std::fs::copy(
        tiny().join("tokenizer_config.json"),
        model.join("tokenizer_config.json"),
    )
    .unwrap();
    std::fs::write(
        model.join("chat_template.jinja"),
        "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}\n",
    )
    .unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    let output = inspect(&config(
        dir.path(),
        data.to_str().unwrap(),
        "format = \"chat\"",
        &model,
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("chat_template.jinja: chat template: syntax error"),
        "{stderr}"
    );
    assert!(stderr.contains("(template line 3)"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
