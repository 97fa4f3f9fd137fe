//! docs/configuration.md cannot drift from the configuration structs: every key the structs
//! have is documented with its default, and every documented key exists.

use std::collections::BTreeMap;
use std::path::Path;

use feinschliff_train::run_config::RunConfig;

/// `section.key` → default, as TOML writes it, for every key of a configuration.
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let name = match prefix.is_empty() {
            true => key.clone(),
            false => format!("{prefix}.{key}"),
        };
        match value {
            toml::Value::Table(inner) if !inner.is_empty() && name != "data.roles" => {
                flatten(&name, inner, out)
            }
            toml::Value::String(text) if text.contains('\n') => {
                out.insert(name, format!("MULTILINE:{text}"));
            }
            other => {
                out.insert(name, other.to_string());
            }
        }
    }
}

/// Rows `| `key` | `default` | meaning |` of the reference tables.
fn documented(markdown: &str) -> BTreeMap<String, String> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2)?;
            let default = default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .unwrap_or(default);
            Some((key.to_owned(), default.to_owned()))
        })
        .collect()
}

#[test]
fn every_key_is_documented_with_its_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let documented = documented(&docs);
    let config = RunConfig::parse(
        "[model]\npath = \"REQUIRED\"\n[data]\ntrain = \"REQUIRED\"\n",
        &[],
    )
    .unwrap();
    let table: toml::Table = config.to_toml().parse().unwrap();
    let mut actual = BTreeMap::new();
    flatten("", &table, &mut actual);
    for (key, default) in &actual {
        let Some(doc) = documented.get(key) else {
            panic!("docs/configuration.md does not document `{key}` (default {default})");
        };
        let expected = match default.as_str() {
            "\"REQUIRED\"" | "[\"REQUIRED\"]" => "required",
            // Long texts are given in full below the table.
            text if text.starts_with("MULTILINE:") => {
                let text = &text["MULTILINE:".len()..];
                assert!(
                    docs.contains(text),
                    "the default of `{key}` is not in the docs"
                );
                "see below"
            }
            other => other,
        };
        assert_eq!(doc, expected, "default of `{key}` in docs/configuration.md");
    }
    for key in documented.keys() {
        assert!(
            actual.contains_key(key),
            "documented key `{key}` does not exist"
        );
    }
}
