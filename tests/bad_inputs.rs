//! The bad-input corpus (`tests/bad_inputs/cases.toml`, broken files made by
//! `tests/bad_inputs/make.py`): every case is a CLI call on broken input that must fail with
//! exit code != 0 and a single line on stderr naming the file, line, key or tensor, without a
//! panic, within 10 s and 1 GiB of memory, and must leave nothing under its output's final
//! name (an existing file untouched).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// Runs the CLI with `args`, its stderr into `stderr_file`, killed after a minute (so a case
/// that hangs fails the time bound instead of hanging the test); returns its exit status,
/// stderr and seconds.
fn run_cli(args: &[String], stderr_file: &Path) -> (ExitStatus, String, f64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .current_dir(root())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_file).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(stderr_file).unwrap()).into_owned();
    (status, stderr, started.elapsed().as_secs_f64())
}

/// The highest peak memory (RSS, MiB) of the child processes waited for so far.
fn children_peak_rss_mib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss / 1024
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
        let (status, stderr, seconds) = run_cli(&args, &temp.path().join("stderr.txt"));
        let name = &case.name;
        assert!(seconds < 10.0, "{name}: took {seconds:.1} s");
        let rss = children_peak_rss_mib();
        assert!(rss < 1024, "{name}: peak memory {rss} MiB");
        assert!(!status.success(), "{name}: succeeded");
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
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
