//! The quantized base's blocks against the references: NF4 bit for bit against bitsandbytes
//! (`scripts/make_nf4_fixture.py`), and GGML blocks of a GGUF file, kept as they are, decoding
//! to the `gguf` package's values (`scripts/make_gguf_fixtures.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use feinschliff_model::io::gguf::GgufFile;
use feinschliff_model::quant::nf4::{BLOCK_BYTES, CODE_BOOK};
use feinschliff_model::quant::{BlockFormat, QuantizedMatrix};
use safetensors::SafeTensors;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

/// name → raw bytes of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn nf4_blocks_equal_bitsandbytes_bit_for_bit() {
    let expected = tensors(&fixture("quant/nf4_expected.safetensors"));
    assert_eq!(
        bits(&f32s(&expected["code"])),
        bits(&CODE_BOOK),
        "code book"
    );
    let input = f32s(&expected["input"]);
    let matrix = QuantizedMatrix::quantize(BlockFormat::Nf4, &input, [8, 128]).unwrap();
    let absmax = f32s(&expected["absmax"]);
    let packed = &expected["packed"];
    for (i, block) in matrix.data().chunks_exact(BLOCK_BYTES).enumerate() {
        assert_eq!(block[..4], absmax[i].to_le_bytes(), "block {i}: absmax");
        assert_eq!(block[4..], packed[32 * i..32 * (i + 1)], "block {i}: codes");
    }
    assert_eq!(absmax.len(), matrix.data().len() / BLOCK_BYTES);
    let dequantized = f32s(&expected["dequantized"]);
    assert_eq!(
        bits(&matrix.dequantize()),
        bits(&dequantized),
        "dequantized"
    );
}

#[test]
fn gguf_blocks_kept_as_they_are_decode_to_the_gguf_package_values() {
    let file = GgufFile::open(&fixture("gguf/quants.gguf")).unwrap();
    let expected = tensors(&fixture("gguf/quants_expected.safetensors"));
    for name in ["q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"] {
        let (info, bytes) = file.tensor_bytes(name).unwrap();
        let dims = [info.shape()[0], info.shape()[1]];
        let format = BlockFormat::Ggml(info.ty);
        let matrix = QuantizedMatrix::from_blocks(format, dims, bytes.to_vec()).unwrap();
        let ours = matrix.dequantize();
        assert_eq!(bits(&ours), bits(&f32s(&expected[name])), "{name}");
    }
}
