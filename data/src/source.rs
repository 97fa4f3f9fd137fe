//! Reading records from data files.
//!
//! For now: JSONL files whose records carry a text field. Every bad line is an error that names
//! the file and the line; blank lines are skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::DataError;

/// Reads the string field `field` of every record of a JSONL file, in file order.
pub fn read_jsonl_texts(path: &Path, field: &str) -> Result<Vec<String>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut texts = Vec::new();
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line_no = index + 1;
        let bad = |message: String| DataError::Line {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let bytes = line.map_err(|e| DataError::io(path, e))?;
        let line = std::str::from_utf8(&bytes).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let object = record
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let text = match object.get(field) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "field `{field}` must be a string, found {}",
                    json_kind(other)
                )));
            }
            None => return Err(bad(format!("missing field `{field}`"))),
        };
        texts.push(text);
    }
    Ok(texts)
}

/// A short name for the JSON type of `value`, for error messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, content).unwrap();
        file
    }

    #[test]
    fn reads_texts_and_skips_blank_lines() {
        let file = write(b"{\"text\": \"a\"}\n\n{\"text\": \"\\u00e4\", \"x\": 1}\n");
        assert_eq!(read_jsonl_texts(file.path(), "text").unwrap(), ["a", "ä"]);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"{\"text\": \"a\"}\n{\"text\": 3}\n",
                ":2: field `text` must be a string",
            ),
            (b"{\"other\": \"a\"}\n", ":1: missing field `text`"),
            (b"{\"text\": \"a\"}\n{broken\n", ":2: invalid JSON"),
            (b"{\"text\": \"\xff\"}\n", ":1: not UTF-8"),
        ];
        for (content, expected) in cases {
            let file = write(content);
            let message = read_jsonl_texts(file.path(), "text")
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.starts_with(&file.path().display().to_string()));
        }
    }
}
