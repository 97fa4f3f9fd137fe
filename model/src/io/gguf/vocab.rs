//! A Hugging Face tokenizer (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`)
//! as GGUF `tokenizer.ggml.*` metadata, the way llama.cpp's `convert_hf_to_gguf.py` writes a
//! byte-level BPE vocabulary (`_set_vocab_gpt2`): model `gpt2`, the pre-tokenizer's llama.cpp
//! name, every id up to the model's vocabulary size (ids without a token become `[PADn]`,
//! UNUSED), added tokens CONTROL when special or when they look special (`<|…|>`, `<pad>`, …:
//! the converter's `does_token_look_special`), other added tokens USER_DEFINED, the merges, the
//! special token ids, `add_bos_token` and the chat template. The reverse of
//! [`super::tokenizer`].
//!
//! SentencePiece-style vocabularies (BPE with byte fallback behind `▁`: Llama 2, Mistral
//! v0.1–v0.3, and what `import-gguf` makes of a `llama` vocabulary) are written as llama.cpp's
//! `llama` model, which merges the adjacent pair whose joined token has the highest score.
//! `tokenizer.json` holds merge ranks, not scores, so a token made by merge `r` gets the score
//! `−r` (earlier merges win, as in BPE), other tokens lower scores than every merge; byte
//! tokens `<0xXX>` are BYTE and the unknown token UNKNOWN. (llama.cpp's own converter gives
//! every token −1000 when it has no `tokenizer.model`, which loses the merge order.)

use std::collections::BTreeMap;
use std::path::Path;

use feinschliff_data::tokenize::{TokenizerConfig, is_byte_fallback_token};
use serde_json::Value as Json;

use super::tokenizer::{GPT4O_SPLIT, LLAMA3_SPLIT, QWEN2_SPLIT, TEKKEN_SPLIT};
use super::writer::MetaValue;
use crate::Error;
use crate::config::LlamaConfig;

/// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The `tokenizer.ggml.*` and `tokenizer.chat_template` metadata of the model in `dir`.
pub fn vocab_metadata(dir: &Path, config: &LlamaConfig) -> Result<Vec<(String, MetaValue)>, Error> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&path, format!("invalid JSON: {e}")))?;
    let bad = |message: String| Error::invalid(&path, message);
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "key `model.type`: only BPE vocabularies (byte-level, or SentencePiece-style with \
             byte fallback) can be written to GGUF here, not {}",
            model["type"]
        )));
    }
    let (tokens, mut types) = tokens_and_types(&json, config.vocab_size).map_err(bad)?;
    let merges = merges(&model["merges"]).map_err(bad)?;
    let unk = model["unk_token"].as_str().map(String::from);
    let mut meta = if model["byte_fallback"] == true {
        let unk_id = unk
            .as_ref()
            .and_then(|t| tokens.iter().position(|s| s == t));
        sentencepiece_vocab(&json, &tokens, &mut types, unk_id, &merges)
    } else {
        let pre = pre_tokenizer_name(&json["pre_tokenizer"]).map_err(bad)?;
        vec![
            key("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
            key("tokenizer.ggml.pre", MetaValue::Str(pre.into())),
            key("tokenizer.ggml.merges", MetaValue::Strs(merges)),
        ]
    };
    meta.push(key(
        "tokenizer.ggml.tokens",
        MetaValue::Strs(tokens.clone()),
    ));
    meta.push(key("tokenizer.ggml.token_type", MetaValue::I32s(types)));
    let special = TokenizerConfig::from_model_dir(dir)?;
    let id_of = |text: &Option<String>| {
        text.as_ref()
            .and_then(|t| tokens.iter().position(|s| s == t))
    };
    let bos = id_of(&special.bos_token).or(config.bos_token_id.map(|id| id as usize));
    let eos = id_of(&special.eos_token).or(config.eos_token_ids.first().map(|&id| id as usize));
    let add_bos = special
        .add_bos_token
        .unwrap_or_else(|| post_processor_adds_bos(&json["post_processor"]));
    let ids = [
        ("bos", bos),
        ("eos", eos),
        ("unknown", id_of(&unk)),
        ("padding", id_of(&special.pad_token)),
    ];
    for (name, id) in ids {
        if let Some(id) = id {
            meta.push(key(
                &format!("tokenizer.ggml.{name}_token_id"),
                MetaValue::U32(id as u32),
            ));
        }
    }
    meta.push(key(
        "tokenizer.ggml.add_bos_token",
        MetaValue::Bool(add_bos),
    ));
    meta.push(key("tokenizer.ggml.add_eos_token", MetaValue::Bool(false)));
    if let Some(template) = special.chat_template {
        meta.push(key("tokenizer.chat_template", MetaValue::Str(template)));
    }
    Ok(meta)
}

/// `tokenizer.ggml.model = llama` with scores from the merge ranks, BYTE and UNKNOWN types
/// marked in `types`, and `add_space_prefix` as the pre-tokenizer or normalizer prepends `▁`.
fn sentencepiece_vocab(
    json: &Json,
    tokens: &[String],
    types: &mut [i32],
    unk: Option<usize>,
    merges: &[String],
) -> Vec<(String, MetaValue)> {
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    for (r, merge) in merges.iter().enumerate() {
        rank.entry(merge.replacen(' ', "", 1)).or_insert(r);
    }
    let scores = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| match rank.get(token) {
            Some(&r) => -(r as f32),
            None => -((merges.len() + id) as f32),
        })
        .collect();
    for (id, token) in tokens.iter().enumerate() {
        if types[id] == NORMAL && is_byte_fallback_token(token) {
            types[id] = BYTE;
        }
    }
    if let Some(id) = unk {
        types[id] = UNKNOWN;
    }
    vec![
        key("tokenizer.ggml.model", MetaValue::Str("llama".into())),
        key("tokenizer.ggml.scores", MetaValue::F32s(scores)),
        key(
            "tokenizer.ggml.add_space_prefix",
            MetaValue::Bool(prepends_space(json)),
        ),
    ]
}

/// Whether the tokenizer puts `▁` before the text: a Metaspace pre-tokenizer that prepends, or
/// a normalizer that prepends `▁` (Llama 2's `tokenizer.json`).
fn prepends_space(json: &Json) -> bool {
    let pre = &json["pre_tokenizer"];
    let metaspace = pre["type"] == "Metaspace"
        && (pre["prepend_scheme"] == "first"
            || pre["prepend_scheme"] == "always"
            || pre["add_prefix_space"] == true);
    let normalizer = &json["normalizer"];
    let steps = match normalizer["normalizers"].as_array() {
        Some(list) => list.clone(),
        None => vec![normalizer.clone()],
    };
    metaspace
        || steps
            .iter()
            .any(|n| n["type"] == "Prepend" && n["prepend"] == "\u{2581}")
}

fn key(name: &str, value: MetaValue) -> (String, MetaValue) {
    (name.to_string(), value)
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for a byte-level pre-tokenizer: GPT-2's own split,
/// SmolLM's (single digits first), or a split regex llama.cpp knows by name.
fn pre_tokenizer_name(pre: &Json) -> Result<&'static str, String> {
    let byte_level = |p: &Json, regex: bool| p["type"] == "ByteLevel" && p["use_regex"] == regex;
    if byte_level(pre, true) {
        return Ok("gpt-2");
    }
    let parts = pre["pretokenizers"].as_array().map(Vec::as_slice);
    match parts {
        Some([digits, level])
            if digits["type"] == "Digits"
                && digits["individual_digits"] == true
                && byte_level(level, true) =>
        {
            return Ok("smollm");
        }
        Some([split, level]) if split["type"] == "Split" && byte_level(level, false) => {
            let regex = split["pattern"]["Regex"].as_str().unwrap_or_default();
            let known = [
                (LLAMA3_SPLIT, "llama-bpe"),
                (QWEN2_SPLIT, "qwen2"),
                (TEKKEN_SPLIT, "tekken"),
                (GPT4O_SPLIT, "gpt-4o"),
            ];
            if let Some((_, name)) = known.iter().find(|(r, _)| *r == regex) {
                return Ok(name);
            }
        }
        _ => {}
    }
    Err(format!(
        "key `pre_tokenizer`: {} has no llama.cpp pre-tokenizer name we know (GPT-2, SmolLM, \
         Llama 3, Qwen2, Tekken and GPT-4o splits are known)",
        serde_json::to_string(pre).unwrap_or_default()
    ))
}

/// Every token text for ids `0..vocab_size` with its llama.cpp type.
fn tokens_and_types(json: &Json, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>), String> {
    let vocab = json["model"]["vocab"]
        .as_object()
        .ok_or("key `model.vocab` is not an object")?;
    let mut by_id: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or(format!("token `{token}`: id {id} is not a number"))?;
        by_id.insert(id as usize, (token.clone(), NORMAL));
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(format!(
                "key `added_tokens`: entry {added} has no id or content"
            ));
        };
        let entry = if added["special"] == true || looks_special(content) {
            (content.to_string(), CONTROL)
        } else {
            // The converter writes a user-defined token's `▁` as a space.
            (content.replace('\u{2581}', " "), USER_DEFINED)
        };
        by_id.insert(id as usize, entry);
    }
    if let Some((&id, (token, _))) = by_id.range(vocab_size..).next() {
        return Err(format!(
            "token `{token}` has id {id}, outside the model's vocabulary of {vocab_size}"
        ));
    }
    Ok((0..vocab_size)
        .map(|id| {
            by_id
                .remove(&id)
                .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED))
        })
        .unzip())
}

/// Merges as `"a b"` strings (`tokenizer.json` holds them as pairs or as such strings).
fn merges(merges: &Json) -> Result<Vec<String>, String> {
    let items = merges
        .as_array()
        .ok_or("key `model.merges` is not a list")?;
    items
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(format!("key `model.merges`: {m} is not a pair of tokens")),
            },
            _ => Err(format!("key `model.merges`: {m} is not a merge")),
        })
        .collect()
}

/// Whether the post-processor puts a special token before the text (BOS).
fn post_processor_adds_bos(post: &Json) -> bool {
    let processors = match post["type"].as_str() {
        Some("Sequence") => post["processors"].as_array().cloned().unwrap_or_default(),
        _ => vec![post.clone()],
    };
    processors.iter().any(|p| {
        p["type"] == "TemplateProcessing"
            && p["single"]
                .as_array()
                .and_then(|s| s.first())
                .is_some_and(|first| first.get("SpecialToken").is_some())
    })
}

/// The converter's `does_token_look_special`: added tokens that models mark as not special
/// although they are control tokens (Qwen's `<|fim_prefix|>`, `<pad>`, Gemma's `<unused…>`).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pre_tokenizers_get_llama_cpp_names() {
        let level = |regex: bool| json!({"type": "ByteLevel", "use_regex": regex});
        assert_eq!(pre_tokenizer_name(&level(true)).unwrap(), "gpt-2");
        let split = |regex: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
                level(false)]})
        };
        assert_eq!(
            pre_tokenizer_name(&split(LLAMA3_SPLIT)).unwrap(),
            "llama-bpe"
        );
        assert_eq!(pre_tokenizer_name(&split(QWEN2_SPLIT)).unwrap(), "qwen2");
        let error = pre_tokenizer_name(&split("\\s+")).unwrap_err();
        assert!(error.starts_with("key `pre_tokenizer`: {"), "{error}");
        let digits = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, level(true)]});
        assert_eq!(pre_tokenizer_name(&digits).unwrap(), "smollm");
    }

    #[test]
    fn ids_without_tokens_are_unused_pads() {
        let json = json!({
            "model": {"vocab": {"a": 0, "b": 1}},
            "added_tokens": [{"id": 3, "content": "<s>", "special": true},
                             {"id": 4, "content": "hi\u{2581}du", "special": false},
                             {"id": 6, "content": "<|fim_prefix|>", "special": false}],
        });
        let (tokens, types) = tokens_and_types(&json, 7).unwrap();
        assert_eq!(
            tokens,
            [
                "a",
                "b",
                "[PAD2]",
                "<s>",
                "hi du",
                "[PAD5]",
                "<|fim_prefix|>"
            ]
        );
        assert_eq!(
            types,
            [
                NORMAL,
                NORMAL,
                UNUSED,
                CONTROL,
                USER_DEFINED,
                UNUSED,
                CONTROL
            ]
        );
        assert_eq!(
            tokens_and_types(&json, 4).unwrap_err(),
            "token `hi du` has id 4, outside the model's vocabulary of 4"
        );
    }
}
