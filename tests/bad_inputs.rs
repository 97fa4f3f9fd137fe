//! The bad-input corpus (`tests/bad_inputs/cases.toml`, broken files made by
//! `tests/bad_inputs/make.py`): every case is a CLI call on broken input that must fail with
//! exit code != 0 and a single line on stderr naming the file, line, key or tensor, without a
//! panic, within [`TIME_LIMIT`] and [`MEMORY_LIMIT_KIB`], and must leave nothing under its
//! output's final name (an existing file untouched).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// The longest a case may run.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// The most resident memory a case may use.
const MEMORY_LIMIT_KIB: i64 = 1024 * 1024;

/// Runs the CLI with `args`, its stderr into `stderr`; returns the exit code. Fails the case
/// when it runs past [`TIME_LIMIT`] (then killed) or its peak resident memory, or any earlier
/// case's, exceeded [`MEMORY_LIMIT_KIB`].
fn run_bounded(name: &str, args: &[String], stderr: &Path) -> Option<i32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_feinschliff"))
        .current_dir(root())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name}: still running after {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid for writes of one `rusage`, which getrusage fills on success.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } == 0;
    assert!(ok, "getrusage failed");
    // SAFETY: getrusage succeeded, so it initialized `usage`.
    let peak_kib = unsafe { usage.assume_init() }.ru_maxrss;
    assert!(
        peak_kib <= MEMORY_LIMIT_KIB,
        "{name}: peak resident memory {peak_kib} KiB"
    );
    status.code()
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
        let name = &case.name;
        let stderr_file = temp.path().join("stderr");
        let code = run_bounded(name, &args, &stderr_file);
        let stderr = String::from_utf8_lossy(&std::fs::read(&stderr_file).unwrap()).into_owned();
        std::fs::remove_file(&stderr_file).unwrap();
        assert_ne!(code, Some(0), "{name}: succeeded");
        assert_eq!(code, Some(1), "{name}: {stderr}");
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
