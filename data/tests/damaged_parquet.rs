//! Damaged Parquet files that crashed polars-parquet 0.55 inside `read_records`: four panics
//! (a thrift field of the wrong type, an `unwrap` on missing column metadata, a validity
//! bitmap sliced past its length, a page range past the end of the file) and one abort (a data
//! page claiming a negative number of values, which polars tried to allocate for). They were
//! found by writing random bytes over a valid file, as `fuzz/fuzz_targets/data_source.rs` does.
//! Each must now be an error naming the file, on one line; a valid file still reads.

use std::path::{Path, PathBuf};

use feinschliff_data::source::read_records;
use polars_core::prelude::{Column, DataFrame, IntoSeries, ListChunked, NamedFrom, Series};
use polars_io::parquet::write::ParquetWriter;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/damaged_parquet")
        .join(name)
}

#[test]
fn damaged_parquet_files_are_errors_naming_the_file() {
    let cases = [
        (
            "thrift_bool_field.parquet",
            "the file is damaged (thrift bool field)",
        ),
        ("unwrap_in_column_metadata.parquet", "the file is damaged"),
        ("bitmap_past_its_length.parquet", "the file is damaged"),
        ("page_past_the_end.parquet", "the file is damaged"),
        (
            "negative_page_value_count.parquet",
            "row group 0, column `text`: a data page claims a negative number of values",
        ),
    ];
    for (name, expected) in cases {
        let path = fixture(name);
        let message = read_records(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        let prefix = format!("{}: cannot read Parquet: ", path.display());
        assert!(message.starts_with(&prefix), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message}");
        assert!(!message.contains('\n'), "{name}: {message}");
    }
}

#[test]
fn a_valid_parquet_file_reads_with_every_column() {
    let tags: ListChunked = [vec!["a", "b"], vec![], vec!["ccc"]]
        .iter()
        .map(|tags| Some(Series::new("".into(), tags.as_slice())))
        .collect();
    let mut frame = DataFrame::new_infer_height(vec![
        Column::new("text".into(), ["Der Antrag", "Bescheid", "Die Behörde"]),
        Column::new("id".into(), [1i64, 2, 3]),
        Column::from(tags.with_name("tags".into()).into_series()),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.parquet");
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut frame)
        .unwrap();
    let records = read_records(&[path]).unwrap();
    let fields: Vec<_> = records.iter().map(|r| json!(r.fields)).collect();
    assert_eq!(
        fields,
        [
            json!({"text": "Der Antrag", "id": 1, "tags": ["a", "b"]}),
            json!({"text": "Bescheid", "id": 2, "tags": []}),
            json!({"text": "Die Behörde", "id": 3, "tags": ["ccc"]}),
        ]
    );
}
