//! The token cache: a second run reads the examples back instead of tokenizing, and anything
//! that shapes them (an option, the data, the tokenizer) makes a new entry.

use std::path::{Path, PathBuf};

use feinschliff_data::config::{DataConfig, Format};
use feinschliff_data::dataset::load_dataset;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn second_load_comes_from_the_cache_and_changes_retokenize() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"Der Antrag ist fristgerecht einzureichen.\"}\n{\"text\": \"Die Behörde entscheidet.\"}\n",
    )
    .unwrap();
    let model = root().join("tests/fixtures/llama/tied_gqa");
    let mut config = DataConfig::new(data.display().to_string());
    config.max_len = 8;
    config.cache_dir = dir.path().join("cache").display().to_string();

    let first = load_dataset(&config, &model).unwrap();
    assert!(!first.from_cache);
    let second = load_dataset(&config, &model).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.data.train, first.data.train);
    assert_eq!(second.data.train_stats, first.data.train_stats);

    // Packing does not shape the examples: same entry.
    config.packing = true;
    assert!(load_dataset(&config, &model).unwrap().from_cache);
    // An option that does: a new entry.
    config.max_len = 16;
    let longer = load_dataset(&config, &model).unwrap();
    assert!(!longer.from_cache);
    assert_ne!(longer.data.train, first.data.train);
    // Changed data: a new entry.
    config.max_len = 8;
    std::fs::write(&data, "{\"text\": \"Anders.\"}\n").unwrap();
    assert!(!load_dataset(&config, &model).unwrap().from_cache);
    // A damaged entry is not trusted: it is rebuilt.
    let entry = load_dataset(&config, &model).unwrap().cache_file.unwrap();
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let rebuilt = load_dataset(&config, &model).unwrap();
    assert!(!rebuilt.from_cache);
    assert!(load_dataset(&config, &model).unwrap().from_cache);
}

/// Rewrites the JSON file `path` with `edit` applied.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

#[test]
fn a_changed_tokenizer_or_chat_template_retokenizes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(root().join("tests/fixtures/llama/tied_gqa")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let data = dir.path().join("chat.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Frist?\"}, {\"role\": \"assistant\", \"content\": \"Ein Monat.\"}]}\n",
    )
    .unwrap();
    let mut config = DataConfig::new(data.display().to_string());
    config.format = Format::Chat;
    config.max_len = 512;
    config.cache_dir = dir.path().join("cache").display().to_string();
    let mut previous = load_dataset(&config, &model).unwrap();
    assert!(!previous.from_cache);
    assert!(load_dataset(&config, &model).unwrap().from_cache);

    type Edit = Box<dyn Fn(&Path)>;
    let edits: [(&str, Edit); 3] = [
        // Without merges, every word splits into single characters.
        (
            "tokenizer.json",
            Box::new(|path| {
                edit_json(path, |json| {
                    json["model"]["merges"].as_array_mut().unwrap().clear();
                })
            }),
        ),
        (
            "tokenizer_config.json",
            Box::new(|path| edit_json(path, |json| json["add_bos_token"] = true.into())),
        ),
        (
            "chat_template.jinja",
            Box::new(|path| {
                let template = std::fs::read_to_string(path).unwrap();
                std::fs::write(path, template.replace("<|im_start|>", "<|im_start|> ")).unwrap();
            }),
        ),
    ];
    for (file, edit) in edits {
        edit(&model.join(file));
        let changed = load_dataset(&config, &model).unwrap();
        assert!(
            !changed.from_cache,
            "{file} changed, yet the cache was used"
        );
        assert_ne!(changed.cache_file, previous.cache_file, "{file}");
        assert!(load_dataset(&config, &model).unwrap().from_cache, "{file}");
        previous = changed;
    }
}

#[test]
fn links_planted_in_a_shared_cache_dir_are_neither_read_nor_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"text\": \"Der Antrag.\"}\n").unwrap();
    let model = root().join("tests/fixtures/llama/tied_gqa");
    let mut config = DataConfig::new(data.display().to_string());
    config.cache_dir = dir.path().join("first").display().to_string();
    let entry = load_dataset(&config, &model).unwrap().cache_file.unwrap();
    // Another user's links under this entry's names in a shared cache directory.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let examples = shared.join(entry.file_name().unwrap());
    std::os::unix::fs::symlink(&victim, &examples).unwrap();
    std::os::unix::fs::symlink(&victim, examples.with_extension("json")).unwrap();
    config.cache_dir = shared.display().to_string();
    let err = load_dataset(&config, &model).unwrap_err().to_string();
    assert!(
        err.contains(&examples.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(&examples).unwrap().is_symlink());
}

#[test]
#[ignore = "needs scripts/fetch-smollm2.sh and scripts/make_law_forms.py"]
fn de_admin_chat_from_the_cache_in_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DataConfig::new(
        root()
            .join("data/corpora/de-admin/chat.jsonl")
            .display()
            .to_string(),
    );
    config.format = Format::Chat;
    config.max_len = 1024;
    config.cache_dir = dir.path().display().to_string();
    let model = root().join("checkpoints/base/smollm2-135m-instruct");
    let cold = load_dataset(&config, &model).unwrap();
    assert!(!cold.from_cache);
    let warm = load_dataset(&config, &model).unwrap();
    assert!(warm.from_cache);
    assert_eq!(warm.data.train.len(), cold.data.train.len());
    assert!(warm.seconds < 1.0, "cache load took {:.2} s", warm.seconds);
    eprintln!(
        "de-admin chat.jsonl: tokenized in {:.2} s, from the cache in {:.3} s ({} examples)",
        cold.seconds,
        warm.seconds,
        cold.data.train.len()
    );
}
