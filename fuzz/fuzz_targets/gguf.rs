//! The GGUF reader, dequantization and the whole `import-gguf` path (config mapping, shape
//! checks, q/k un-permutation, tokenizer conversion, writing the model directory) on arbitrary
//! bytes: errors, never panics. Seed it with tests/fixtures/gguf, or the import is rarely
//! reached.
#![no_main]

mod scratch;

use feinschliff_model::io::gguf::GgufFile;
use feinschliff_model::io::gguf::import::import_gguf;
use feinschliff_model::io::safetensors_out::StoreDtype;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = scratch::scratch_file("input.gguf", bytes);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    for name in file.tensors.keys() {
        let _ = file.tensor_f32(name);
    }
    let out = path.with_file_name("imported");
    if import_gguf(&path, &out, StoreDtype::F32).is_ok() {
        std::fs::remove_dir_all(&out).expect("remove the imported directory");
    }
});
