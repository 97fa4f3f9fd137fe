//! The data file readers (JSON Lines, JSON arrays, CSV) on arbitrary bytes: errors, never panics.
#![no_main]

mod scratch;

use feinschliff_data::source::read_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&kind, rest)) = bytes.split_first() else {
        return;
    };
    let name = match kind % 3 {
        0 => "data.jsonl",
        1 => "data.json",
        _ => "data.csv",
    };
    let path = scratch::scratch_file(name, rest);
    if let Ok(records) = read_records(&[path]) {
        for record in &records {
            let _ = record.string("text");
        }
    }
});
