//! Reading records from data files: JSON Lines, JSON arrays, Parquet and CSV, named by paths or
//! glob patterns. Every record becomes a JSON object, whatever the file type, and remembers where
//! it came from so that errors can name the file and line (or record).
//!
//! Parquet and CSV go through polars (`polars-io`). JSON Lines and JSON arrays are parsed with
//! serde_json instead: polars' JSON readers report no line numbers, and a bad line must be
//! named exactly.

use std::fmt;
use std::io::{BufRead, BufReader, Cursor};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use polars_buffer::Buffer;
use polars_core::prelude::{AnyValue, DataFrame};
use polars_io::SerReader;
use polars_io::csv::read::CsvReadOptions;
use polars_io::parquet::read::ParquetReader;
use polars_parquet::parquet::page::CompressedPage;
use polars_parquet::parquet::read::{get_page_iterator, read_metadata};
use serde_json::{Map, Value};

use crate::Error;

/// One record and where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's columns.
    pub fields: Map<String, Value>,
    /// Its file and position.
    pub origin: Origin,
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The data file.
    pub path: PathBuf,
    /// 1-based line for JSON Lines, else the 1-based record (CSV: not counting the header).
    pub position: Position,
}

/// A record's position in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A line of a line-oriented file.
    Line(usize),
    /// The n-th record of a file.
    Record(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Line(line) => write!(f, "{}:{line}", self.path.display()),
            Position::Record(n) => write!(f, "{}: record {n}", self.path.display()),
        }
    }
}

impl Record {
    /// An error about this record, naming its file and line or record number.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Record {
            origin: self.origin.to_string(),
            message: message.into(),
        }
    }

    /// The string column `key`; a missing or non-string column is an error naming it.
    pub fn string(&self, key: &str) -> Result<&str, Error> {
        match self.fields.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.error(format!(
                "field `{key}` must be a string, found {}",
                json_kind(other)
            ))),
            None => Err(self.error(format!("missing field `{key}`"))),
        }
    }
}

/// The files that `patterns` name: each pattern is a path or a glob (`*`, `?`, `[…]`); a glob's
/// matches are sorted. A pattern that names nothing is an error.
pub fn expand_patterns(patterns: &[String]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for pattern in patterns {
        if !pattern.contains(['*', '?', '[']) {
            let path = PathBuf::from(pattern);
            if !path.is_file() {
                return Err(Error::invalid(&path, "no such data file"));
            }
            files.push(path);
            continue;
        }
        let matches = glob::glob(pattern)
            .map_err(|e| Error::invalid(pattern, format!("bad glob pattern: {e}")))?;
        let mut found: Vec<PathBuf> = matches
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(Error::invalid(pattern, "the pattern matches no file"));
        }
        found.sort();
        files.append(&mut found);
    }
    Ok(files)
}

/// Reads every record of every file, in order; the file type comes from the extension.
pub fn read_records(files: &[PathBuf]) -> Result<Vec<Record>, Error> {
    let mut records = Vec::new();
    for path in files {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("jsonl" | "ndjson") => read_jsonl(path, &mut records)?,
            Some("json") => read_json_array(path, &mut records)?,
            Some("parquet") => {
                let frame = read_parquet(path)?;
                frame_records(path, &frame, Position::Record, &mut records)?;
            }
            Some("csv") => {
                let frame = CsvReadOptions::default()
                    .with_has_header(true)
                    .with_infer_schema_length(Some(0))
                    .try_into_reader_with_file_path(Some(path.clone()))
                    .and_then(|reader| reader.finish())
                    .map_err(|e| Error::invalid(path, format!("cannot read CSV: {e}")))?;
                frame_records(path, &frame, Position::Record, &mut records)?;
            }
            _ => {
                return Err(Error::invalid(
                    path,
                    "unknown data file type: use .jsonl, .json (an array of records), .parquet or .csv",
                ));
            }
        }
    }
    Ok(records)
}

/// The string column `field` of every record of `files`, in order.
pub fn read_texts(files: &[PathBuf], field: &str) -> Result<Vec<String>, Error> {
    read_records(files)?
        .iter()
        .map(|record| record.string(field).map(str::to_owned))
        .collect()
}

/// JSON Lines: one object per line; blank lines are skipped.
fn read_jsonl(path: &Path, records: &mut Vec<Record>) -> Result<(), Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line_no = index + 1;
        let bad = |message: String| Error::Line {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let bytes = line.map_err(|e| Error::io(path, e))?;
        let line = std::str::from_utf8(&bytes).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(bad(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        records.push(Record {
            fields,
            origin: Origin {
                path: path.to_path_buf(),
                position: Position::Line(line_no),
            },
        });
    }
    Ok(())
}

/// A JSON file holding an array of objects.
fn read_json_array(path: &Path, records: &mut Vec<Record>) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::invalid(path, format!("not UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Line {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("invalid JSON: {e}"),
    })?;
    let Value::Array(items) = value else {
        return Err(Error::invalid(
            path,
            format!("expected an array of records, found {}", json_kind(&value)),
        ));
    };
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(fields) = item else {
            return Err(Error::invalid(
                path,
                format!(
                    "record {}: expected a JSON object, found {}",
                    index + 1,
                    json_kind(&item)
                ),
            ));
        };
        records.push(Record {
            fields,
            origin: Origin {
                path: path.to_path_buf(),
                position: Position::Record(index + 1),
            },
        });
    }
    Ok(())
}

/// The rows of a polars frame as records; `position` numbers row `n` (1-based).
fn frame_records(
    path: &Path,
    frame: &DataFrame,
    position: fn(usize) -> Position,
    records: &mut Vec<Record>,
) -> Result<(), Error> {
    let columns = frame.columns();
    let mut rows: Vec<Map<String, Value>> = vec![Map::new(); frame.height()];
    for column in columns {
        let name = column.name().to_string();
        let series = column.as_materialized_series();
        for (row, value) in rows.iter_mut().zip(series.iter()) {
            let value = any_to_json(value).map_err(|dtype| {
                Error::invalid(
                    path,
                    format!("column `{name}` has type {dtype}, which cannot be read as text"),
                )
            })?;
            row.insert(name.clone(), value);
        }
    }
    for (index, fields) in rows.into_iter().enumerate() {
        records.push(Record {
            fields,
            origin: Origin {
                path: path.to_path_buf(),
                position: position(index + 1),
            },
        });
    }
    Ok(())
}

/// A Parquet file as a data frame. polars-parquet panics on some damaged files (a thrift
/// field of the wrong type, an offset past the end of the file); such a panic becomes an error
/// naming the file. Page headers are checked first (see [`check_page_headers`]).
fn read_parquet(path: &Path) -> Result<DataFrame, Error> {
    let bytes = Buffer::from(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let cannot = |message: String| Error::invalid(path, format!("cannot read Parquet: {message}"));
    let read = || {
        check_page_headers(&bytes)?;
        ParquetReader::new(Cursor::new(bytes.clone()))
            .finish()
            .map_err(|e| e.to_string())
    };
    match catch_quietly(read) {
        Ok(read) => read.map_err(cannot),
        Err(panic) => Err(cannot(format!("the file is damaged ({panic})"))),
    }
}

/// Refuses a Parquet file with a data page that claims a negative number of values:
/// polars-parquet (0.55) takes that for a count near 2^64 and aborts the process allocating
/// for it, past any error handling. Reads only the footer and the page headers.
fn check_page_headers(bytes: &Buffer<u8>) -> Result<(), String> {
    let metadata = read_metadata(&mut Cursor::new(bytes.clone())).map_err(|e| e.to_string())?;
    for (group, row_group) in metadata.row_groups.iter().enumerate() {
        for column in row_group.parquet_columns() {
            let pages =
                get_page_iterator(column, Cursor::new(bytes.clone()), Vec::new(), bytes.len())
                    .map_err(|e| e.to_string())?;
            for page in pages {
                let CompressedPage::Data(page) = page.map_err(|e| e.to_string())? else {
                    continue;
                };
                if page.num_values() > i32::MAX as usize {
                    return Err(format!(
                        "row group {group}, column `{}`: a data page claims a negative number of values",
                        column.descriptor().path_in_schema.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic into its message. While any such call runs, no panic message is
/// printed: polars panics on its own worker threads too, so the hook cannot tell whose it is.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.load(Ordering::SeqCst) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.fetch_add(1, Ordering::SeqCst);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|payload| {
        let text = match (
            payload.downcast_ref::<&str>(),
            payload.downcast_ref::<String>(),
        ) {
            (Some(text), _) => text.to_string(),
            (None, Some(text)) => text.clone(),
            (None, None) => "a panic without a message".into(),
        };
        text.replace('\n', " ")
    })
}

/// A polars value as JSON (strings, numbers, booleans, lists, structs, nulls); other types give
/// their name back as the error.
fn any_to_json(value: AnyValue<'_>) -> Result<Value, String> {
    Ok(match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::UInt8(v) => v.into(),
        AnyValue::UInt16(v) => v.into(),
        AnyValue::UInt32(v) => v.into(),
        AnyValue::UInt64(v) => v.into(),
        AnyValue::Int8(v) => v.into(),
        AnyValue::Int16(v) => v.into(),
        AnyValue::Int32(v) => v.into(),
        AnyValue::Int64(v) => v.into(),
        AnyValue::Float32(v) => f64::from(v).into(),
        AnyValue::Float64(v) => v.into(),
        AnyValue::List(series) => Value::Array(
            series
                .iter()
                .map(any_to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        AnyValue::Struct(..) => any_to_json(value.into_static())?,
        AnyValue::StructOwned(owned) => {
            let (values, fields) = *owned;
            let mut object = Map::new();
            for (value, field) in values.into_iter().zip(fields) {
                object.insert(field.name().to_string(), any_to_json(value)?);
            }
            Value::Object(object)
        }
        other => return Err(other.dtype().to_string()),
    })
}

/// A short name for the JSON type of `value`, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn texts(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| r.string("text").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn reads_jsonl_json_csv_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "a.jsonl",
            b"{\"text\": \"a\"}\n\n{\"text\": \"\\u00e4\", \"x\": 1}\n",
        );
        write(d, "b.json", "[{\"text\": \"ß\"}]".as_bytes());
        write(d, "c.csv", b"text,other\n\"x, \"\"quoted\"\"\",1\ny,2\n");
        let files = expand_patterns(&[
            d.join("*.json*").display().to_string(),
            d.join("c.csv").display().to_string(),
        ])
        .unwrap();
        let records = read_records(&files).unwrap();
        assert_eq!(texts(&records), ["a", "ä", "ß", "x, \"quoted\"", "y"]);
        assert_eq!(
            records[1].origin.to_string(),
            format!("{}:3", files[0].display())
        );
        assert_eq!(records[4].origin.position, Position::Record(2));
        assert_eq!(records[4].fields["other"], "2");
    }

    #[test]
    fn bad_input_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases: [(&str, &[u8], &str); 5] = [
            (
                "a.jsonl",
                b"{\"text\": \"a\"}\n{broken\n",
                ":2: invalid JSON",
            ),
            ("b.jsonl", b"{\"text\": \"\xff\"}\n", ":1: not UTF-8"),
            (
                "c.jsonl",
                b"[1]\n",
                ":1: expected a JSON object, found an array",
            ),
            (
                "d.json",
                b"[{\"text\": 1}, 3]",
                "record 2: expected a JSON object",
            ),
            ("e.txt", b"x", "unknown data file type"),
        ];
        for (name, content, expected) in cases {
            let path = write(d, name, content);
            let message = read_records(std::slice::from_ref(&path))
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{message}");
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
        }
        let message = expand_patterns(&[d.join("*.nothing").display().to_string()])
            .unwrap_err()
            .to_string();
        assert!(message.contains("matches no file"), "{message}");
        let records = read_records(&[write(d, "f.jsonl", b"{\"text\": 3}\n")]).unwrap();
        let message = records[0].string("text").unwrap_err().to_string();
        assert!(message.ends_with("f.jsonl:1: field `text` must be a string, found a number"));
        let message = records[0].string("body").unwrap_err().to_string();
        assert!(message.ends_with(":1: missing field `body`"), "{message}");
    }
}
