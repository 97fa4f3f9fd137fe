//! A GGUF's tokenizer metadata (`tokenizer.ggml.*`) as Hugging Face `tokenizer.json` and
//! `tokenizer_config.json`, built the way transformers builds its tokenizer from a GGUF
//! (`integrations/gguf/gguf_tokenizer_mapping.py` in transformers 5.23), so both give the same
//! token ids:
//!
//! - `gpt2` vocabularies become byte-level BPE with the file's merges; tokens not spelled in the
//!   byte alphabet are re-spelled from their UTF-8 bytes;
//! - the pre-tokenizer is GPT-2's byte-level split, or, where `tokenizer.ggml.pre` names a
//!   vocabulary with its own split regex (llama3, qwen2, tekken, gpt-4o, ...), that regex;
//! - tokens typed CONTROL (3) are special added tokens, USER_DEFINED (4) plain added tokens;
//! - BOS (and EOS) are added by the post-processor when `tokenizer.ggml.add_bos_token`
//!   (`add_eos_token`) says so.
//!
//! - `llama` (SentencePiece) vocabularies become BPE with byte fallback behind a `▁` Metaspace
//!   pre-tokenizer; their merges, which GGUF files usually leave out, are recovered from the
//!   token scores exactly as transformers' `generate_merges` does; BOS is added unless the
//!   file says otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value as Json, json};

use super::Value;

/// The two tokenizer files of a model directory.
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer: Json,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Json,
    /// Things the user should know about the conversion.
    pub notes: Vec<String>,
}

pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` name, as transformers maps them; `None` means
/// GPT-2's own byte-level split.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's map from bytes to the printable characters that spell them in byte-level vocabularies.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        map[b as usize] = char::from_u32(c).expect("valid code point");
    }
    map
}

/// The array `key`, each item converted by `item` (which names the expected kind when it fails).
fn array<'a, T>(
    meta: &'a BTreeMap<String, Value>,
    key: &str,
    kind: &str,
    item: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<Vec<T>>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                item(v).ok_or_else(|| format!("metadata `{key}` must hold {kind}, found {v:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!(
            "metadata `{key}` must be an array, found {other:?}"
        )),
    }
}

fn strings<'a>(
    meta: &'a BTreeMap<String, Value>,
    key: &str,
) -> Result<Option<Vec<&'a str>>, String> {
    array(meta, key, "strings", |v| match v {
        Value::String(s) => Some(s.as_str()),
        _ => None,
    })
}

fn ints(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<Vec<i64>>, String> {
    array(meta, key, "integers", |v| match v {
        Value::Int(i) => Some(*i),
        Value::Uint(u) => Some(*u as i64),
        _ => None,
    })
}

fn floats(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<Vec<f64>>, String> {
    array(meta, key, "floats", |v| match v {
        Value::Float(f) => Some(*f),
        _ => None,
    })
}

fn flag(meta: &BTreeMap<String, Value>, key: &str) -> Option<bool> {
    match meta.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Builds the tokenizer files from GGUF metadata; `config` is the model's `config.json` (for
/// the context length).
pub(crate) fn convert_tokenizer(
    meta: &BTreeMap<String, Value>,
    config: &Json,
) -> Result<TokenizerFiles, String> {
    let kind = match meta.get("tokenizer.ggml.model") {
        Some(Value::String(m)) => m.as_str(),
        _ => {
            return Err(
                "metadata `tokenizer.ggml.model` is missing: the file has no tokenizer".into(),
            );
        }
    };
    let tokens = strings(meta, "tokenizer.ggml.tokens")?
        .ok_or("metadata `tokenizer.ggml.tokens` is missing")?;
    let token_types = ints(meta, "tokenizer.ggml.token_type")?.unwrap_or_default();
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(format!(
            "`tokenizer.ggml.token_type` has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        ));
    }
    let token_of = |key: &str| -> Result<Option<(String, u64)>, String> {
        match meta.get(key) {
            None => Ok(None),
            Some(Value::Uint(id)) => tokens
                .get(*id as usize)
                .map(|t| Some((t.to_string(), *id)))
                .ok_or_else(|| {
                    format!(
                        "metadata `{key}` = {id} is outside the vocabulary of {}",
                        tokens.len()
                    )
                }),
            Some(other) => Err(format!(
                "metadata `{key}` must be a token id, found {other:?}"
            )),
        }
    };
    let bos = token_of("tokenizer.ggml.bos_token_id")?;
    let eos = token_of("tokenizer.ggml.eos_token_id")?;
    let unk = token_of("tokenizer.ggml.unknown_token_id")?;
    let pad = token_of("tokenizer.ggml.padding_token_id")?;
    let mut notes = Vec::new();
    let (model, pre_tokenizer, decoder, add_bos_default, byte_level) = match kind {
        "gpt2" => {
            let (model, pre_tokenizer, decoder) = byte_level_bpe(meta, &tokens, &mut notes)?;
            (model, pre_tokenizer, decoder, false, true)
        }
        "llama" => {
            let (model, pre_tokenizer, decoder) = sentencepiece_bpe(meta, &tokens)?;
            (model, pre_tokenizer, decoder, true, false)
        }
        other => {
            return Err(format!(
                "tokenizer model `{other}` (`tokenizer.ggml.model`) is not supported (gpt2, llama)"
            ));
        }
    };
    let add_bos = flag(meta, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);
    let add_eos = flag(meta, "tokenizer.ggml.add_eos_token").unwrap_or(false);
    let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
    let mut added = Vec::new();
    for (id, (token, ty)) in tokens.iter().zip(&token_types).enumerate() {
        let special = match ty {
            // A byte-level "control" token outside the byte alphabet is a llama.cpp mislabel.
            3 if !byte_level || token.chars().all(|c| alphabet.contains(&c)) => true,
            4 => false,
            _ => continue,
        };
        added.push(added_token(id as u64, token, special));
    }
    // The named special tokens are special even where the file does not type them CONTROL.
    for (token, id) in [&bos, &eos, &unk, &pad].into_iter().flatten() {
        if !added.iter().any(|a| a["id"] == json!(id)) {
            added.push(added_token(*id, token, true));
        }
    }
    added.sort_by_key(|a| a["id"].as_u64());

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(bos.as_ref().filter(|_| add_bos), eos.as_ref().filter(|_| add_eos)),
        "decoder": decoder,
        "model": model,
    });
    let chat_template = match meta.get("tokenizer.chat_template") {
        Some(Value::String(t)) => Json::String(t.clone()),
        _ => Json::Null,
    };
    let text = |t: &Option<(String, u64)>| t.as_ref().map_or(Json::Null, |(s, _)| json!(s));
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(&bos),
        "eos_token": text(&eos),
        "unk_token": text(&unk),
        "pad_token": text(&pad),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config["max_position_embeddings"],
        "chat_template": chat_template,
    });
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config,
        notes,
    })
}

fn added_token(id: u64, content: &str, special: bool) -> Json {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": special,
    })
}

/// `(model, pre_tokenizer, decoder)` of a GPT-2-style byte-level BPE vocabulary.
fn byte_level_bpe(
    meta: &BTreeMap<String, Value>,
    tokens: &[&str],
    notes: &mut Vec<String>,
) -> Result<(Json, Json, Json), String> {
    let merges = strings(meta, "tokenizer.ggml.merges")?
        .ok_or("metadata `tokenizer.ggml.merges` is missing")?;
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
            token.to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = merge.split_once(' ').ok_or_else(|| {
            format!("merge {i} `{merge}` of `tokenizer.ggml.merges` is not two tokens")
        })?;
        merge_pairs.push(json!([a, b]));
    }
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(Value::String(p)) => p.as_str(),
        _ => "default",
    };
    let pre_tokenizer = match split_regex(pre) {
        Some(regex) => json!({
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false },
                { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false },
            ],
        }),
        None => {
            if !matches!(pre, "default" | "gpt2" | "gpt-2" | "smollm") {
                notes.push(format!(
                    "pre-tokenizer `{pre}` has no split regex of its own here (as in transformers): GPT-2's byte-level split is used"
                ));
            }
            json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true })
        }
    };
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
        "vocab": vocab, "merges": merge_pairs,
    });
    let decoder = json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true });
    Ok((model, pre_tokenizer, decoder))
}

/// `(model, pre_tokenizer, decoder)` of a SentencePiece BPE vocabulary with byte fallback.
fn sentencepiece_bpe(
    meta: &BTreeMap<String, Value>,
    tokens: &[&str],
) -> Result<(Json, Json, Json), String> {
    let merges: Vec<(String, String)> = match strings(meta, "tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        format!("merge {i} `{m}` of `tokenizer.ggml.merges` is not two tokens")
                    })
            })
            .collect::<Result<_, _>>()?,
        None => {
            let scores = floats(meta, "tokenizer.ggml.scores")?.ok_or(
                "metadata `tokenizer.ggml.merges` and `tokenizer.ggml.scores` are both missing",
            )?;
            if scores.len() != tokens.len() {
                return Err(format!(
                    "`tokenizer.ggml.scores` has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                ));
            }
            merges_from_scores(tokens, &scores)?
        }
    };
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
        "vocab": vocab, "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
    });
    let pre_tokenizer = json!({ "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false });
    let decoder = json!({
        "type": "Sequence",
        "decoders": [
            { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
            { "type": "ByteFallback" },
            { "type": "Fuse" },
            { "type": "Strip", "content": " ", "start": 1, "stop": 0 },
        ],
    });
    Ok((model, pre_tokenizer, decoder))
}

/// The longest token, in characters, whose merges are recovered from the scores: recovery
/// looks up both halves of every split of every token, so its work grows with the square of a
/// token's length. Real SentencePiece vocabularies stay far below (their longest tokens are
/// runs of a few dozen spaces or punctuation marks).
const MAX_MERGE_TOKEN_CHARS: usize = 256;

/// The merges a SentencePiece vocabulary implies (transformers' `generate_merges`): every split
/// of a token into two tokens of the vocabulary, ordered by the token's score (best first),
/// then by the lengths of the two halves (longer first); ties keep the vocabulary's order.
/// A NaN score (which has no order) and a token longer than [`MAX_MERGE_TOKEN_CHARS`] are
/// refused, naming the entry.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Result<Vec<(String, String)>, String> {
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(format!(
            "`tokenizer.ggml.scores` entry {i} (token {:?}) is NaN, which has no order to recover merges by",
            tokens[i]
        ));
    }
    if let Some((i, chars)) = (tokens.iter().map(|t| t.chars().count()).enumerate())
        .find(|&(_, chars)| chars > MAX_MERGE_TOKEN_CHARS)
    {
        return Err(format!(
            "token {i} of `tokenizer.ggml.tokens` has {chars} characters; merges are recovered from `tokenizer.ggml.scores` only for tokens of up to {MAX_MERGE_TOKEN_CHARS} (the work grows with the square of the length)"
        ));
    }
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        // `partial_cmp`, not `total_cmp`: a score of -0.0 ties with 0.0, as in Python (no NaN
        // is left, so this is a total order).
        kb.0.partial_cmp(&ka.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    Ok(merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect())
}

/// `TemplateProcessing` that puts BOS before and EOS after each sequence, where asked.
fn post_processor(bos: Option<&(String, u64)>, eos: Option<&(String, u64)>) -> Json {
    let piece = |token: &(String, u64), type_id: u32| json!({ "SpecialToken": { "id": token.0, "type_id": type_id } });
    let sequence = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    let around = |id: &str, type_id: u32| {
        let mut items: Vec<Json> = bos.map(|b| piece(b, type_id)).into_iter().collect();
        items.push(sequence(id, type_id));
        items.extend(eos.map(|e| piece(e, type_id)));
        items
    };
    let mut pair = around("A", 0);
    pair.extend(around("B", 1));
    let special: HashMap<&str, Json> = bos
        .into_iter()
        .chain(eos)
        .map(|(token, id)| {
            (
                token.as_str(),
                json!({ "id": token, "ids": [id], "tokens": [token] }),
            )
        })
        .collect();
    json!({ "type": "TemplateProcessing", "single": around("A", 0), "pair": pair, "special_tokens": special })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let map = bytes_to_unicode();
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[b'A' as usize], 'A');
        let distinct: std::collections::HashSet<char> = map.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    /// SentencePiece metadata without merges: `tokens` with `scores`.
    fn sentencepiece(tokens: &[String], scores: &[f64]) -> BTreeMap<String, Value> {
        let strings = tokens.iter().map(|t| Value::String(t.clone())).collect();
        let floats = scores.iter().map(|&s| Value::Float(s)).collect();
        BTreeMap::from([
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(strings)),
            ("tokenizer.ggml.scores".into(), Value::Array(floats)),
        ])
    }

    fn merges_of(meta: &BTreeMap<String, Value>) -> Result<Json, String> {
        convert_tokenizer(meta, &json!({})).map(|files| files.tokenizer["model"]["merges"].clone())
    }

    #[test]
    fn merges_are_recovered_from_scores_best_first() {
        let tokens = ["a", "b", "ab", "ba", "aba"].map(String::from);
        let merges = merges_of(&sentencepiece(&tokens, &[0.0, 0.0, -1.0, -0.5, -2.0])).unwrap();
        assert_eq!(
            merges,
            json!([["b", "a"], ["a", "b"], ["ab", "a"], ["a", "ba"]])
        );
    }

    #[test]
    fn a_nan_score_is_refused_naming_the_entry() {
        let tokens: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let mut scores: Vec<f64> = (0..40).map(|i| -(i as f64)).collect();
        scores[17] = f64::NAN;
        let message = merges_of(&sentencepiece(&tokens, &scores)).unwrap_err();
        assert!(
            message.contains("`tokenizer.ggml.scores` entry 17"),
            "{message}"
        );
        assert!(message.contains("NaN"), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn a_token_too_long_for_merge_recovery_is_refused_naming_it() {
        let mut tokens: Vec<String> = ["a", "aa"].map(String::from).to_vec();
        tokens.push("a".repeat(MAX_MERGE_TOKEN_CHARS));
        tokens.push("a".repeat(200_000));
        let scores = vec![0.0; tokens.len()];
        let started = std::time::Instant::now();
        let message = merges_of(&sentencepiece(&tokens, &scores)).unwrap_err();
        assert!(
            started.elapsed().as_secs() < 1,
            "took {:?}",
            started.elapsed()
        );
        assert!(
            message.starts_with("token 3 of `tokenizer.ggml.tokens` has 200000 characters"),
            "{message}"
        );
        assert!(
            message.contains(&MAX_MERGE_TOKEN_CHARS.to_string()),
            "{message}"
        );
    }

    #[test]
    fn tokens_at_the_length_cap_are_recovered_quickly() {
        // Every run of `a` up to the cap, in many copies that differ in their last character:
        // each token splits at every position, the worst case the cap allows.
        let mut tokens: Vec<String> = (1..=MAX_MERGE_TOKEN_CHARS).map(|n| "a".repeat(n)).collect();
        let stem = "a".repeat(MAX_MERGE_TOKEN_CHARS - 1);
        tokens.extend(('\u{100}'..'\u{1100}').map(|c| format!("{stem}{c}")));
        tokens.extend(('\u{100}'..'\u{1100}').map(String::from));
        let scores: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
        let started = std::time::Instant::now();
        let merges = merges_from_scores(
            &tokens.iter().map(String::as_str).collect::<Vec<_>>(),
            &scores,
        )
        .unwrap();
        assert_eq!(
            merges.len(),
            4096 + MAX_MERGE_TOKEN_CHARS * (MAX_MERGE_TOKEN_CHARS - 1) / 2
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "took {:?}",
            started.elapsed()
        );
    }
}
