//! The GGUF reader and dequantization on arbitrary bytes: errors, never panics.
#![no_main]

mod scratch;

use feinschliff_model::io::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = scratch::scratch_file("input.gguf", bytes);
    if let Ok(file) = GgufFile::open(&path) {
        let names: Vec<String> = file.tensors.keys().cloned().collect();
        for name in names {
            let _ = file.tensor_f32(&name);
        }
    }
});
