//! The safetensors reader on arbitrary bytes: errors, never panics.
#![no_main]

mod scratch;

use feinschliff_model::weights::WeightFiles;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = scratch::scratch_file("model.safetensors", bytes);
    if let Ok(files) = WeightFiles::open_file(&path) {
        let _ = files.finish();
    }
});
