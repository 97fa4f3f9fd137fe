//! The bad-input corpus (`tests/bad_inputs/cases.toml`, broken files made by
//! `tests/bad_inputs/make.py`): every case is a CLI call on broken input that must fail with
//! exit code != 0 and a single line on stderr naming the file, line, key or tensor, without a
//! panic, and must leave nothing under its output's final name (an existing file untouched).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    args: Vec<String>,
    expect: String,
    #[serde(default)]
    overlay: Option<String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn every_bad_input_gets_a_one_line_error_and_damages_nothing() {
    let corpus = root().join("tests/bad_inputs");
    let cases: Corpus =
        toml::from_str(&std::fs::read_to_string(corpus.join("cases.toml")).unwrap()).unwrap();
    assert!(cases.case.len() >= 25, "only {} cases", cases.case.len());
    let tiny = root().join("tests/fixtures/llama/tied_gqa");
    for case in &cases.case {
        let temp = tempfile::tempdir().unwrap();
        let model = temp.path().join("model");
        copy_dir(&tiny, &model);
        if let Some(overlay) = &case.overlay {
            copy_dir(&corpus.join("files").join(overlay), &model);
        }
        for file in &case.remove {
            std::fs::remove_file(model.join(file)).unwrap();
        }
        let out = temp.path().join("out");
        let file = temp.path().join("existing.txt");
        std::fs::write(&file, "keep me").unwrap();
        let dir = temp.path().join("empty");
        std::fs::create_dir(&dir).unwrap();
        let text = |p: &Path| p.display().to_string();
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| {
                a.replace("{model}", &text(&model))
                    .replace("{tiny}", &text(&tiny))
                    .replace("{files}", &text(&corpus.join("files")))
                    .replace("{out}", &text(&out))
                    .replace("{file}", &text(&file))
                    .replace("{dir}", &text(&dir))
            })
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
            .current_dir(root())
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = &case.name;
        assert!(!output.status.success(), "{name}: succeeded");
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&case.expect),
            "{name}: `{}` not in {stderr}",
            case.expect
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(!out.exists(), "{name}: left {}", out.display());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me", "{name}");
        let leftovers: Vec<_> = std::fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{name}: temporary files left: {leftovers:?}"
        );
    }
}
