//! Streaming generated text: the pieces [`TextStream`] gives out, followed by what
//! [`TextStream::finish`] returns, equal the tokenizer's decoding of all tokens, also where
//! byte-fallback tokens decode as a group (SentencePiece-style vocabularies).

use std::path::Path;

use feinschliff_data::tokenize::TextTokenizer;
use feinschliff_model::generate::TextStream;
use feinschliff_model::io::gguf::import::import_gguf;
use feinschliff_model::io::safetensors_out::StoreDtype;

#[test]
fn streamed_pieces_equal_the_whole_decoding() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("spm");
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/tiny_spm.gguf");
    import_gguf(&gguf, &dir, StoreDtype::F32).unwrap();
    let tokenizer = TextTokenizer::from_model_dir(&dir).unwrap();
    let byte = |b: u8| tokenizer.token_to_id(&format!("<0x{b:02X}>")).unwrap();
    let word = tokenizer.encode("Antrag", false).unwrap();
    // "B" as a byte token, then a lone UTF-8 lead byte: the group decodes as two U+FFFD,
    // although "B" alone would decode cleanly.
    let sequences = [
        [word.clone(), vec![byte(0x42), byte(0xC3)], word.clone()].concat(),
        [word.clone(), vec![byte(0xC3), byte(0x9C)]].concat(), // "Ü" at the very end
        [vec![byte(0x42), byte(0xC3)]].concat(),
    ];
    for ids in sequences {
        let mut stream = TextStream::new(&tokenizer);
        let mut text = String::new();
        for &id in &ids {
            text.extend(stream.push(id).unwrap());
        }
        text.extend(stream.finish().unwrap());
        assert_eq!(text, tokenizer.decode(&ids, true).unwrap(), "{ids:?}");
    }
    assert!(tokenizer.is_byte_token(byte(0x42)));
    assert!(!tokenizer.is_byte_token(word[0]));
}
