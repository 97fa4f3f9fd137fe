//! The data file readers (JSON Lines, JSON arrays, CSV, Parquet) on arbitrary bytes: errors,
//! never panics. Parquet comes two ways: the bytes as they are, and a small valid file with
//! bytes of the input written over it (offset, offset, value triples), which gets past the
//! magic and footer checks into the page decoders; mutating a valid file this way found the
//! files of data/tests/fixtures/damaged_parquet.
#![no_main]

mod scratch;

use std::sync::OnceLock;

use feinschliff_data::source::read_records;
use libfuzzer_sys::fuzz_target;
use polars_core::prelude::{Column, DataFrame, IntoSeries, ListChunked, NamedFrom, Series};
use polars_io::parquet::write::ParquetWriter;

/// A valid Parquet file: a text column, an integer column and a list column.
fn valid_parquet() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let texts = [
            "Der Antrag ist fristgerecht einzureichen.",
            "Bescheid",
            "Die Behörde entscheidet.",
        ];
        let tags: ListChunked = [vec!["a", "b"], vec![], vec!["ccc"]]
            .iter()
            .map(|tags| Some(Series::new("".into(), tags.as_slice())))
            .collect();
        let mut frame = DataFrame::new_infer_height(vec![
            Column::new("text".into(), texts),
            Column::new("id".into(), [1i64, 2, 3]),
            Column::from(tags.with_name("tags".into()).into_series()),
        ])
        .expect("a valid frame");
        let mut bytes = Vec::new();
        ParquetWriter::new(&mut bytes)
            .finish(&mut frame)
            .expect("Parquet in memory");
        bytes
    })
}

/// The valid Parquet file with `patches` (two bytes of offset, one of value) written over it.
fn patched_parquet(patches: &[u8]) -> Vec<u8> {
    let mut file = valid_parquet().to_vec();
    for patch in patches.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % file.len();
        file[at] = patch[2];
    }
    file
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&kind, rest)) = bytes.split_first() else {
        return;
    };
    let (name, content) = match kind % 5 {
        0 => ("data.jsonl", rest.to_vec()),
        1 => ("data.json", rest.to_vec()),
        2 => ("data.csv", rest.to_vec()),
        3 => ("data.parquet", rest.to_vec()),
        _ => ("data.parquet", patched_parquet(rest)),
    };
    let path = scratch::scratch_file(name, &content);
    if let Ok(records) = read_records(&[path]) {
        for record in &records {
            let _ = record.string("text");
        }
    }
});
