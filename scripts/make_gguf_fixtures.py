#!/usr/bin/env python3
"""Writes the GGUF reference fixtures of `feinschliff import-gguf`'s tests.

Everything goes into OUT (default tests/fixtures/gguf/). GGUF "ne" is the ggml shape, fastest
dimension first; the numpy / safetensors shape of a 2-D tensor with ne = [cols, rows] is
(rows, cols). All expected values are `gguf.quants.dequantize(raw bytes, type)` in float32.

1. Tensor formats

  quants.gguf (v3, alignment 32, general.architecture "llama", no model) holds one 2-D tensor
  per ggml type, named after it: f32, f16, bf16, q8_0, q6_k, q4_0, q4_1, q4_k, q5_k (in this
  order; q6_k's 1260 bytes are no multiple of 32, so the tensors after it sit behind padding),
  each ne = [512, 3]. F32/F16/BF16/Q8_0/Q4_0/Q4_1 are `gguf.quants.quantize`d from N(0, 1)
  values; the gguf package cannot quantize to K-quants, so those are random block bytes whose
  f16 scales (d, dmin) are set to finite values of random sign that keep |x| <~ 2.
  It also holds metadata keys of every GGUF value type (see TEST_METADATA), for the reader to
  parse or skip.

  quants_align64.gguf (v3, general.alignment = 64): tensors q8_0 and f16, ne = [256, 5]
  (q8_0's 1360 bytes pad to 1408 here, to 1376 at alignment 32).

  quants_expected.safetensors: f32 arrays [rows, cols] under the tensor names of quants.gguf,
  and those of quants_align64.gguf under "align64.q8_0" / "align64.f16".

  v2.gguf: a GGUF *version 2* file (written by hand, write_gguf_v2: u64 counts as in v3), one
  F32 tensor "f32" with ne = [16, 3]; v2_expected.safetensors: "f32" f32 [3, 16].

2. A converted model

  tiny_llama.gguf: tests/fixtures/llama/tied_gqa (LlamaForCausalLM, hidden 32, 2 layers, 4 heads,
  2 kv heads, vocab 96, tied embeddings, byte-level BPE tokenizer) converted the way llama.cpp's
  convert_hf_to_gguf.py converts a LlamaForCausalLM: llama.* hyper-parameters, gpt2 tokenizer
  with pre "smollm", tensor names token_embd / blk.N.* / output_norm (no output.weight, since
  tied), attn_q and attn_k rows permuted by `permute` (LlamaModel.permute). Storage: attn_v and
  blk.1.ffn_up F16, the other 2-D weights Q8_0, norms F32.

  tiny_llama_expected.safetensors: input_ids int64 [1, 12] (seeded random ids in [0, 96)) and
  logits f32 [1, 12, 96] of transformers' own GGUF loader
  (AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32), eager attention).

  tiny_llama_expected.json: {"config": the architecture keys of transformers' GGUF-derived
  config, "tokenizer_checks": [{"text", "ids"}] of transformers' GGUF-derived tokenizer
  (`tok(text)`) on reference_gguf_tokenizer.TRICKY_TEXTS}.

  The script checks that the GGUF-loaded logits match the original fixture's up to the Q8_0
  error, that an all-F32 conversion matches it to float precision (so the un-permute is exact),
  and that a conversion without the q/k permutation gives clearly different logits.

3. A SentencePiece (llama) vocabulary

  tiny_spm.gguf: a tiny random LlamaForCausalLM (make_fixtures.build_model, seed 7; the sizes of
  tied_gqa, but untied, vocab 400) converted like tiny_llama.gguf (output.weight after
  output_norm; norms F32, output.weight Q8_0, the rest F16), with the vocabulary of a
  SentencePiece BPE model trained here like Llama's tokenizer.model (train_spm), written as
  convert_hf_to_gguf.py writes a SentencePiece vocabulary: tokenizer model "llama", pre
  "default", tokens, scores (f32), token_type (i32): <unk> 0 UNKNOWN, <s> 1 and </s> 2 CONTROL,
  <0x00>..<0xFF> 3..258 BYTE, the pieces 259..398 NORMAL (scores -0.0, -1, -2, ...: merged
  pieces first, then the single characters), <think> 399 USER_DEFINED (score -1000, an added
  token). No merges, no add_bos_token, no add_space_prefix, no pad id.

  tiny_spm_expected.safetensors: input_ids int64 [1, 12] (seeded random ids in [0, 400)) and
  logits f32 [1, 12, 400] of transformers' GGUF loader (float32, eager attention).

  tiny_spm_expected.json: {"config" (as for tiny_llama), "tokenizer_checks" (`tok(text)`, BOS
  added, on SPM_CHECK_TEXTS: TRICKY_TEXTS and a few more), "decode_checks" ({"ids", "text":
  tok.decode(ids, skip_special_tokens=True)}), "tokenizer_json_summary" (the backend
  tokenizer's tokenizer.json without model.vocab and model.merges), "merges_head" (the first 20
  merges transformers derived, [left, right]), "merges_count", "merges_sha256" (sha256 of the
  merges as "left right" lines joined by "\n", UTF-8)}.

  transformers derives the merges with generate_merges: every split of a token into two tokens
  of the vocabulary, with the score of the token; sorted by (score, len(left), len(right)),
  descending and stable (ties keep the order of the vocabulary). Its Metaspace pre-tokenizer
  (prepend_scheme "first") adds no "▁" to text that already starts with a space, unlike
  sentencepiece (and llama.cpp): the script prints where its ids differ from sentencepiece's.

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/make_gguf_fixtures.py [--out tests/fixtures/gguf]
      [--hf tests/fixtures/llama/tied_gqa] [--threads 2]
"""
import argparse
import hashlib
import io
import json
import math
import os
import struct
import tempfile

import numpy as np
import sentencepiece as spm
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.tokenization_utils_base import generate_merges

from make_fixtures import TOKENIZER_CORPUS, build_model
from reference_gguf_tokenizer import TRICKY_TEXTS, load_gguf_tokenizer, tricky_checks, write_json

SEED = 20240131
QK_K = 256

# (name, type) of quants.gguf, in file order
QUANT_TENSORS = [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0),
                 ("q6_k", T.Q6_K), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q4_k", T.Q4_K),
                 ("q5_k", T.Q5_K)]
QUANT_NE = (512, 3)
ALIGN64_TENSORS = [("q8_0", T.Q8_0), ("f16", T.F16)]
ALIGN64_NE = (256, 5)
V2_NE = (16, 3)

# metadata of every GGUF value type in quants.gguf: key -> (value, type)
TEST_METADATA = {
    "test.u8": (200, GGUFValueType.UINT8),
    "test.i8": (-100, GGUFValueType.INT8),
    "test.u16": (60000, GGUFValueType.UINT16),
    "test.i16": (-30000, GGUFValueType.INT16),
    "test.u32": (4_000_000_000, GGUFValueType.UINT32),
    "test.i32": (-2_000_000_000, GGUFValueType.INT32),
    "test.u64": (2**40 + 1, GGUFValueType.UINT64),
    "test.i64": (-(2**40), GGUFValueType.INT64),
    "test.f32": (0.5, GGUFValueType.FLOAT32),
    "test.f64": (-1.25, GGUFValueType.FLOAT64),
    "test.bool": (True, GGUFValueType.BOOL),
    "test.string": ("Grüße", GGUFValueType.STRING),
    "test.array_i32": ([1, -2, 3], GGUFValueType.ARRAY),
    "test.array_string": (["a", "ß", ""], GGUFValueType.ARRAY),
    "test.array_array": ([[1, 2], [3]], GGUFValueType.ARRAY),
}


# ---------------------------------------------------------------------------------------------
# 1. tensor formats
# ---------------------------------------------------------------------------------------------

def f16_bytes(values):
    """float values -> their f16 bytes, shape (n, 2)."""
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def random_k_quant_blocks(qtype, n_blocks, rng):
    """Random bytes of n_blocks K-quant blocks whose f16 scales are finite and sized so that the
    dequantized values stay within about +-2 (|q * sub-scale| is at most 15*63, 31*63 and
    32*128 for Q4_K, Q5_K and Q6_K)."""
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    sign = lambda: rng.choice([-1.0, 1.0], n_blocks)  # noqa: E731
    if qtype in (T.Q4_K, T.Q5_K):
        # block_q4_K / block_q5_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, quants
        q_max = 15 if qtype == T.Q4_K else 31
        blocks[:, 0:2] = f16_bytes(sign() * rng.uniform(0.5, 1.5, n_blocks) / (63 * q_max))
        blocks[:, 2:4] = f16_bytes(sign() * rng.uniform(0.5, 1.5, n_blocks) / 63)
    elif qtype == T.Q6_K:
        # block_q6_K: 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d (last)
        blocks[:, -2:] = f16_bytes(sign() * rng.uniform(0.5, 1.5, n_blocks) / (32 * 128))
    else:
        raise ValueError(f"not a K-quant: {qtype.name}")
    return blocks


def make_raw(qtype, ne, rng):
    """Raw GGUF data of a tensor with ggml shape ne = [cols, rows]: float32/float16 arrays
    (rows, cols) for F32/F16, else uint8 (rows, bytes per row)."""
    cols, rows = ne
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        blocks = random_k_quant_blocks(qtype, rows * cols // QK_K, rng)
        return blocks.reshape(rows, -1)
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    return quantize(values, qtype)


def expected_values(raw, qtype, ne):
    cols, rows = ne
    values = dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    assert np.isfinite(values).all(), qtype.name
    return values


def write_gguf(path, tensors, alignment=None, metadata=None):
    """GGUF v3 with general.architecture "llama", the given extra metadata (key -> (value,
    type)) and tensors [(name, qtype, raw)]."""
    writer = GGUFWriter(path, arch="llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype) in (metadata or {}).items():
        writer.add_key_value(key, value, vtype)
    for name, qtype, raw in tensors:
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_v2(path, tensor_name, values):
    """A GGUF version 2 file by hand: general.architecture, one F32 tensor, alignment 32.
    v2 is laid out like v3 (u64 counts and lengths; v1 had u32), v3 only added big-endian files."""
    def string(s):
        data = s.encode("utf-8")
        return struct.pack("<Q", len(data)) + data

    rows, cols = values.shape
    header = b"GGUF" + struct.pack("<IQQ", 2, 1, 1)  # version, tensor count, kv count
    kv = string("general.architecture") + struct.pack("<I", GGUFValueType.STRING) + string("llama")
    info = (string(tensor_name) + struct.pack("<I", 2) + struct.pack("<QQ", cols, rows)
            + struct.pack("<IQ", T.F32, 0))  # type, offset in the data section
    head = header + kv + info
    padding = b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head + padding + values.astype("<f4").tobytes())


def check_gguf(path, expected, prefix=""):
    """Re-read `path` with gguf's GGUFReader and compare every tensor with `expected`."""
    reader = GGUFReader(path)
    assert len(reader.tensors) == len([k for k in expected if k.startswith(prefix)]), path
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).reshape(expected[prefix + tensor.name].shape)
        assert np.array_equal(values, expected[prefix + tensor.name]), (path, tensor.name)
    return reader


def write_quant_fixtures(out, rng):
    expected = {}
    tensors = []
    for name, qtype in QUANT_TENSORS:
        raw = make_raw(qtype, QUANT_NE, rng)
        tensors.append((name, qtype, raw))
        expected[name] = expected_values(raw, qtype, QUANT_NE)
    path = os.path.join(out, "quants.gguf")
    write_gguf(path, tensors, metadata=TEST_METADATA)
    reader = check_gguf(path, expected)
    for name, qtype, raw in tensors:
        v = expected[name]
        t = next(t for t in reader.tensors if t.name == name)
        print(f"  {name:5s} {qtype.name:5s} ne {t.shape.tolist()} offset {t.data_offset:5d} "
              f"{raw.nbytes:5d} bytes, |x| max {np.abs(v).max():.3f}, std {v.std():.3f}")

    align_tensors = []
    for name, qtype in ALIGN64_TENSORS:
        raw = make_raw(qtype, ALIGN64_NE, rng)
        align_tensors.append((name, qtype, raw))
        expected[f"align64.{name}"] = expected_values(raw, qtype, ALIGN64_NE)
    path = os.path.join(out, "quants_align64.gguf")
    write_gguf(path, align_tensors, alignment=64)
    reader = check_gguf(path, {k: v for k, v in expected.items() if k.startswith("align64.")}, "align64.")
    assert reader.alignment == 64
    print(f"  align64: data offsets {[t.data_offset for t in reader.tensors]}")
    save_file(expected, os.path.join(out, "quants_expected.safetensors"))

    cols, rows = V2_NE
    v2_values = rng.standard_normal((rows, cols)).astype(np.float32)
    path = os.path.join(out, "v2.gguf")
    write_gguf_v2(path, "f32", v2_values)
    reader = check_gguf(path, {"f32": v2_values})
    assert reader.fields["GGUF.version"].contents() == 2
    save_file({"f32": v2_values}, os.path.join(out, "v2_expected.safetensors"))


# ---------------------------------------------------------------------------------------------
# 2. a converted model
# ---------------------------------------------------------------------------------------------

def permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute: within each head, the rotary pairs go from
    HF's [first half | second half] layout to llama.cpp's interleaved (x0, x1), (x2, x3)..."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def unpermute(weights, n_head, n_head_kv):
    """The inverse of `permute` (what transformers' LlamaTensorProcessor does on loading)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


# HF parameter name (after "model.layers.N.") -> GGUF name (after "blk.N.")
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # Qwen2 (and Qwen3 with attention_bias): biases; Qwen3: per-head q/k norms
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
F16_TENSORS = {"blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.1.ffn_up.weight"}


def storage_type(gguf_name, values, all_f32):
    if values.ndim == 1 or all_f32:
        return T.F32
    return T.F16 if gguf_name in F16_TENSORS else T.Q8_0


def gguf_tensors(hf_dir, config, permute_qk=True, all_f32=False, storage=None):
    """[(gguf name, qtype, raw)] of the HF checkpoint, in llama.cpp's naming (output.weight last,
    if the checkpoint has an lm_head.weight); `storage(gguf name, values)` gives the qtype
    (default storage_type)."""
    storage = storage or (lambda name, values: storage_type(name, values, all_f32))
    with safe_open(os.path.join(hf_dir, "model.safetensors"), "np") as f:
        hf = {name: f.get_tensor(name).astype(np.float32) for name in f.keys()}
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    named = [("token_embd.weight", hf["model.embed_tokens.weight"])]
    for layer in range(config["num_hidden_layers"]):
        for hf_suffix, gguf_suffix in LAYER_TENSORS.items():
            if f"model.layers.{layer}.{hf_suffix}" not in hf:
                continue  # a bias or norm this family has not
            values = hf[f"model.layers.{layer}.{hf_suffix}"]
            heads = {"attn_q.weight": n_head, "attn_k.weight": n_kv}.get(gguf_suffix)
            if permute_qk and heads is not None:
                permuted = permute(values, n_head, heads)
                assert np.array_equal(unpermute(permuted, n_head, heads), values)
                assert not np.array_equal(permuted, values)
                values = permuted
            named.append((f"blk.{layer}.{gguf_suffix}", values))
    named.append(("output_norm.weight", hf["model.norm.weight"]))
    if "lm_head.weight" in hf:
        named.append(("output.weight", hf["lm_head.weight"]))
    assert len(named) == len(hf), sorted(hf)
    tensors = []
    for name, values in named:
        qtype = storage(name, values)
        tensors.append((name, qtype, quantize(np.ascontiguousarray(values), qtype)))
    return tensors


def tokenizer_metadata(hf_dir):
    """What convert_hf_to_gguf.py writes for a byte-level BPE (gpt2) tokenizer: the vocabulary
    in its byte-level spelling, token types (added special tokens CONTROL, the rest NORMAL),
    merges as "a b", the special token ids of tokenizer_config.json and the chat template."""
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        tok_config = json.load(f)
    vocab = dict(tokenizer["model"]["vocab"])
    for added in tokenizer["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {a["content"] for a in tokenizer["added_tokens"] if a["special"]}
    token_types = [TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    ids = {key: vocab[tok_config[key]] for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return tokens, token_types, merges, ids, tok_config["chat_template"]


def add_llama_hparams(writer, config, name, file_type):
    """general.* and ARCH.* keys of a converted LlamaForCausalLM (HF config.json `config`);
    Qwen's converters write the same keys under their architecture's name, and key_length /
    value_length where head_dim is not hidden / heads."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    rope_theta = config["rope_theta"] if "rope_theta" in config else config["rope_parameters"]["rope_theta"]
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(file_type)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)


def write_tiny_llama_gguf(path, hf_dir, permute_qk=True, all_f32=False):
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    tokens, token_types, merges, ids, chat_template = tokenizer_metadata(hf_dir)
    assert len(tokens) == config["vocab_size"]

    writer = GGUFWriter(path, arch="llama")
    add_llama_hparams(writer, config, "tied_gqa",
                      LlamaFileType.ALL_F32 if all_f32 else LlamaFileType.MOSTLY_Q8_0)
    writer.add_add_space_prefix(False)
    writer.add_add_bos_token(False)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["bos_token"])
    writer.add_eos_token_id(ids["eos_token"])
    writer.add_unk_token_id(ids["unk_token"])
    writer.add_pad_token_id(ids["pad_token"])
    writer.add_chat_template(chat_template)
    writer.add_quantization_version(2)
    for name, qtype, raw in gguf_tensors(hf_dir, config, permute_qk, all_f32):
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf_model_with_gguf_weights(hf_dir, gguf_path):
    """The HF fixture model with every weight replaced by the dequantized GGUF tensor (q/k
    un-permuted here): the logits transformers' GGUF loader should give, computed without it."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    config = model.config
    gguf_to_hf = {"token_embd.weight": "model.embed_tokens.weight",
                  "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    for layer in range(config.num_hidden_layers):
        for hf_suffix, gguf_suffix in LAYER_TENSORS.items():
            gguf_to_hf[f"blk.{layer}.{gguf_suffix}"] = f"model.layers.{layer}.{hf_suffix}"
    params = dict(model.named_parameters())
    for tensor in GGUFReader(gguf_path).tensors:
        values = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
        if ".attn_q." in tensor.name:
            values = unpermute(values, config.num_attention_heads, config.num_attention_heads)
        elif ".attn_k." in tensor.name:
            values = unpermute(values, config.num_attention_heads, config.num_key_value_heads)
        with torch.no_grad():
            params[gguf_to_hf[tensor.name]].copy_(torch.from_numpy(np.array(values, dtype=np.float32)))
    return model


def gguf_model(gguf_path):
    """transformers' own GGUF loader, float32, eager attention; from a temporary folder that
    holds only a link to the file (no config.json / tokenizer_config.json beside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.basename(gguf_path)
        os.symlink(os.path.abspath(gguf_path), os.path.join(tmp, name))
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32,
                                                     attn_implementation="eager")
    return model.eval()


def logits_of(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits.float()


CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
               "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]


def derived_config(model):
    config = model.config
    # keys the class does not have (Qwen2Config has no head_dim) are left out
    result = {key: getattr(config, key) for key in CONFIG_KEYS if hasattr(config, key)}
    result["model_type"] = config.model_type
    result["rope_parameters"] = dict(config.rope_parameters)
    result["rope_theta"] = config.rope_parameters["rope_theta"]
    return result


def write_tiny_llama(out, hf_dir):
    path = os.path.join(out, "tiny_llama.gguf")
    write_tiny_llama_gguf(path, hf_dir)
    reader = GGUFReader(path)
    print(f"  {path}: {os.path.getsize(path)} bytes, "
          f"{[(t.name, t.tensor_type.name, t.shape.tolist()) for t in reader.tensors[:4]]} ...")

    input_ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(SEED))
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    hf_logits = logits_of(hf_model, input_ids)
    model = gguf_model(path)
    logits = logits_of(model, input_ids)

    # the checks: the GGUF-loaded logits are those of the dequantized weights, close to the
    # original ones (Q8_0 error); an F32 conversion is exact; without the q/k permutation far off
    sim_diff = (logits - logits_of(hf_model_with_gguf_weights(hf_dir, path), input_ids)).abs().max().item()
    q8_diff = (logits - hf_logits).abs().max().item()
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "tiny_llama_f32.gguf")
        write_tiny_llama_gguf(f32_path, hf_dir, all_f32=True)
        f32_diff = (logits_of(gguf_model(f32_path), input_ids) - hf_logits).abs().max().item()
        raw_path = os.path.join(tmp, "tiny_llama_unpermuted.gguf")
        write_tiny_llama_gguf(raw_path, hf_dir, permute_qk=False)
        raw_diff = (logits_of(gguf_model(raw_path), input_ids) - hf_logits).abs().max().item()
    scale = hf_logits.abs().max().item()
    print(f"  logits max |hf| {scale:.3f}, std {hf_logits.std().item():.3f}; max |gguf - hf|: "
          f"Q8_0/F16 file {q8_diff:.2e}, all-F32 file {f32_diff:.2e}, "
          f"q/k not permuted {raw_diff:.2e}; max |gguf - hf with dequantized weights| {sim_diff:.2e}")
    assert sim_diff < 1e-5, "transformers' GGUF logits must be those of the dequantized weights"
    assert f32_diff < 1e-5, "the all-F32 GGUF must reproduce the HF logits"
    assert q8_diff < 0.1 * scale, "Q8_0 error too large"
    assert raw_diff > 10 * q8_diff, "without the q/k permutation the logits must differ"

    save_file({"input_ids": input_ids.numpy(), "logits": logits.numpy()},
              os.path.join(out, "tiny_llama_expected.safetensors"))

    tok = load_gguf_tokenizer(path)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    checks = tricky_checks(tok)
    for check in checks:
        same = check["ids"] == hf_tok(check["text"])["input_ids"]
        print(f"  tok {check['text'][:40]!r}: {len(check['ids'])} ids, same as the HF tokenizer: {same}")
    expected = {"config": derived_config(model), "tokenizer_checks": checks}
    write_json(expected, os.path.join(out, "tiny_llama_expected.json"))
    print(f"  config: {expected['config']}")

def write_family_gguf(path, hf_dir, tok_dir, arch, all_f32=True, rope_freqs=None):
    """The HF fixture `hf_dir` converted the way convert_hf_to_gguf.py converts its class:
    architecture `arch`, q/k permuted for `llama` only (Qwen's GGUFs keep HF's NEOX layout),
    all tensors F32, `tok_dir`'s tokenizer (pre "qwen2" for Qwen), and `rope_freqs` (Llama 3.x's
    frequency factors) as `rope_freqs.weight` before the other tensors."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    tokens, token_types, merges, ids, chat_template = tokenizer_metadata(tok_dir)
    writer = GGUFWriter(path, arch=arch)
    add_llama_hparams(writer, config, os.path.basename(hf_dir), LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if arch == "llama" else "qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["bos_token"])
    writer.add_eos_token_id(ids["eos_token"])
    writer.add_pad_token_id(ids["pad_token"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    for name, qtype, raw in gguf_tensors(hf_dir, config, permute_qk=arch == "llama", all_f32=all_f32):
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama3_rope_factors(config):
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors for rope_type llama3."""
    rope = config.get("rope_scaling") or config["rope_parameters"]
    base = config.get("rope_theta") or rope["rope_theta"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


# name, HF fixture (tests/fixtures/llama/...), GGUF architecture
FAMILY_GGUFS = [("tiny_qwen2", "qwen2_tied", "qwen2"), ("tiny_qwen3", "qwen3", "qwen3")]


def write_family_ggufs(out, llama_fixtures):
    """tiny_qwen2.gguf, tiny_qwen3.gguf: the expected logits are the HF fixture's, which
    transformers' own GGUF loader must reproduce (all tensors F32) where it loads the file; it
    does not load tiny_qwen3 (head_dim 16, see below), whose config is then the HF fixture's.
    tiny_llama3_rope.gguf:
    Llama 3.1-style RoPE as `rope_freqs.weight`; transformers' GGUF loader ignores that tensor
    (its logits are those of unscaled RoPE), llama.cpp divides each frequency by its factor,
    which is the HF fixture's llama3 RoPE: the expected logits are the HF fixture's."""
    tok_dir = os.path.join(llama_fixtures, "tied_gqa")
    input_ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(SEED))
    for name, hf_name, arch in FAMILY_GGUFS + [("tiny_llama3_rope", "llama3_rope", "llama")]:
        hf_dir = os.path.join(llama_fixtures, hf_name)
        path = os.path.join(out, f"{name}.gguf")
        with open(os.path.join(hf_dir, "config.json")) as f:
            config = json.load(f)
        freqs = llama3_rope_factors(config) if arch == "llama" else None
        write_family_gguf(path, hf_dir, tok_dir, arch, rope_freqs=freqs)
        hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
        hf_logits = logits_of(hf_model, input_ids)
        try:
            model = gguf_model(path)
        except RuntimeError as error:
            # transformers 5.23 builds Qwen3 from GGUF with its default head_dim (128), ignoring
            # qwen3.attention.key_length: the fixture's head_dim 16 does not load
            print(f"  {name}: transformers' GGUF loader fails: {str(error).splitlines()[-1]}")
            assert arch == "qwen3", error
            model = None
        if model is not None:
            diff = (logits_of(model, input_ids) - hf_logits).abs().max().item()
            print(f"  {name}: {os.path.getsize(path)} bytes; max |transformers GGUF - HF| {diff:.2e}")
        if freqs is not None:
            print(f"    rope_freqs {freqs.tolist()}")
            assert diff > 1e-3, "transformers' GGUF loader was expected to ignore rope_freqs"
        elif model is not None:
            assert diff < 1e-5, f"{name}: transformers' GGUF loading must give the HF logits"
        save_file({"input_ids": input_ids.numpy(), "logits": hf_logits.numpy()},
                  os.path.join(out, f"{name}_expected.safetensors"))
        tok = load_gguf_tokenizer(path)
        config = derived_config(model or hf_model)
        if model is None:  # the HF fixture's config, with the pad id and f32 epsilon of the GGUF
            fields = GGUFReader(path).fields
            config["pad_token_id"] = fields["tokenizer.ggml.padding_token_id"].contents()
            config["rms_norm_eps"] = fields[f"{arch}.attention.layer_norm_rms_epsilon"].contents()
        expected = {"config": config, "tokenizer_checks": tricky_checks(tok),
                    "transformers_gguf": "fails to load" if model is None else
                    f"max |logit - HF fixture's| = {diff:.3e}"}
        write_json(expected, os.path.join(out, f"{name}_expected.json"))

# ---------------------------------------------------------------------------------------------
# 3. a SentencePiece (llama) vocabulary
# ---------------------------------------------------------------------------------------------

SPM_PIECES = 399  # pieces of the trained model; the added <think> makes 400 tokens
SPM_USER_DEFINED = "<think>"
SPM_MODEL_SEED = 7
# extra training text (written for this fixture) with runs of spaces, so that the vocabulary
# has whitespace-only pieces ("▁▁", ...) as Llama's does
SPM_EXTRA_CORPUS = [
    "Betreff:  Ihr Antrag vom 3. Mai  (Eingang am 7. Mai)",
    "    Anlage 1:  Formular zur  Anmeldung",
    "Aktenzeichen  L 6  /  2023,  bitte  stets  angeben.",
    "  Sehr geehrte Damen und Herren,  vielen Dank für Ihr Schreiben.",
]
SPM_CHECK_TEXTS = TRICKY_TEXTS[:-1] + [
    "Hallo Welt", " führender Leerraum", "a<think>b", "Zeile1\nZeile2",
    "x€y",  # "€" and "x" are no pieces: byte fallback
    "<s>Hallo</s> <unk>", "",
]
SPM_DECODE_TEXTS = [" führender Leerraum", "a<think>b", "x€y"]


def train_spm():
    """A SentencePiece BPE model set up like Llama's tokenizer.model (identity normalization,
    dummy prefix, extra whitespace kept, whitespace-only pieces allowed, digits split, byte
    fallback; unk 0, bos 1, eos 2, no pad), trained on make_fixtures' tokenizer corpus without
    its tab / newline sentence, plus SPM_EXTRA_CORPUS. One thread: deterministic."""
    corpus = [text for text in TOKENIZER_CORPUS if "\n" not in text and "\t" not in text]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus + SPM_EXTRA_CORPUS), model_writer=proto, model_type="bpe",
        vocab_size=SPM_PIECES, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


def spm_vocab(sp):
    """(tokens, scores, token types) as convert_hf_to_gguf.py's _create_vocab_sentencepiece
    writes them: the pieces with their scores, UNKNOWN / CONTROL / BYTE / NORMAL; then the
    added token <think> (an added_tokens.json entry): score -1000, USER_DEFINED."""
    tokens, scores, token_types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        token_types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                           else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
    tokens.append(SPM_USER_DEFINED)
    scores.append(-1000.0)
    token_types.append(TokenType.USER_DEFINED)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert token_types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    assert set(token_types[3:259]) == {TokenType.BYTE} and TokenType.BYTE not in token_types[259:]
    return tokens, scores, token_types


def spm_storage(gguf_name, values):
    """Mostly F16 as llama.cpp's f16 conversion: norms F32, 2-D weights F16, output.weight Q8_0."""
    if values.ndim == 1:
        return T.F32
    return T.Q8_0 if gguf_name == "output.weight" else T.F16


def write_tiny_spm_gguf(path, hf_dir, vocab, metadata=None):
    """What convert_hf_to_gguf.py writes for a LlamaForCausalLM with a SentencePiece vocabulary
    (_set_vocab_sentencepiece): tokenizer model "llama", pre "default", tokens, scores, token
    types, no merges; bos / eos / unk ids, no pad, no add_bos_token, no add_space_prefix.
    `metadata` (key -> (value, type)): extra keys, for the probes of write_tiny_spm."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    tokens, scores, token_types = vocab
    assert len(tokens) == config["vocab_size"]

    writer = GGUFWriter(path, arch="llama")
    add_llama_hparams(writer, config, "tiny_spm", LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("</s>"))
    writer.add_unk_token_id(tokens.index("<unk>"))
    for key, (value, vtype) in (metadata or {}).items():
        writer.add_key_value(key, value, vtype)
    writer.add_quantization_version(2)
    for name, qtype, raw in gguf_tensors(hf_dir, config, storage=spm_storage):
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tokenizer_json_summary(tok):
    """transformers' backend tokenizer as tokenizer.json, without the model's vocab and merges;
    and the merges ([left, right] pairs, first applied first)."""
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    summary = dict(backend, model={k: v for k, v in model.items() if k not in ("vocab", "merges")})
    return summary, [list(merge) for merge in model["merges"]]


def write_tiny_spm(out):
    sp = train_spm()
    vocab = spm_vocab(sp)
    tokens, scores, token_types = vocab
    spec = dict(seed=SPM_MODEL_SEED, rope=dict(rope_type="default", rope_theta=10000.0),
                config=dict(vocab_size=len(tokens), tie_word_embeddings=False, num_key_value_heads=2))
    path = os.path.join(out, "tiny_spm.gguf")
    input_ids = torch.randint(0, len(tokens), (1, 12), generator=torch.Generator().manual_seed(SEED))
    with tempfile.TemporaryDirectory() as hf_dir:
        build_model(spec).save_pretrained(hf_dir)
        write_tiny_spm_gguf(path, hf_dir, vocab)
        hf_logits = logits_of(AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager").eval(), input_ids)
        model = gguf_model(path)
        logits = logits_of(model, input_ids)
        sim_logits = logits_of(hf_model_with_gguf_weights(hf_dir, path), input_ids)
        sim_diff = (logits - sim_logits).abs().max().item()

        # probes (printed, not recorded): what transformers makes of add_space_prefix = false and
        # add_bos_token = false in such a file
        probes = {}
        for key in ("tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_bos_token"):
            probe_path = os.path.join(hf_dir, "probe.gguf")
            write_tiny_spm_gguf(probe_path, hf_dir, vocab, {key: (False, GGUFValueType.BOOL)})
            probes[key] = load_gguf_tokenizer(probe_path)
    reader = GGUFReader(path)
    for key in ("merges", "add_bos_token", "add_space_prefix", "padding_token_id"):
        assert f"tokenizer.ggml.{key}" not in reader.fields, key
    assert reader.fields["tokenizer.ggml.scores"].types == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]
    assert reader.fields["tokenizer.ggml.token_type"].types == [GGUFValueType.ARRAY, GGUFValueType.INT32]
    print(f"  {path}: {os.path.getsize(path)} bytes, {len(tokens)} tokens "
          f"({sum(t == TokenType.NORMAL for t in token_types)} normal), "
          f"{[(t.name, t.tensor_type.name) for t in reader.tensors if not t.name.startswith('blk.1')]}")
    scale = hf_logits.abs().max().item()
    f16_diff = (logits - hf_logits).abs().max().item()
    print(f"  logits max |hf| {scale:.3f}; max |gguf - hf| {f16_diff:.2e}; "
          f"max |gguf - hf with dequantized weights| {sim_diff:.2e}")
    assert sim_diff < 1e-5, "transformers' GGUF logits must be those of the dequantized weights"
    assert f16_diff < 0.05 * scale, "F16 / Q8_0 error too large"
    save_file({"input_ids": input_ids.numpy(), "logits": logits.numpy()},
              os.path.join(out, "tiny_spm_expected.safetensors"))

    tok = load_gguf_tokenizer(path)
    summary, merges = tokenizer_json_summary(tok)
    expected_merges = generate_merges({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores)))
    assert merges == [list(m) for m in expected_merges], "merges are not generate_merges' by score"
    checks = tricky_checks(tok, SPM_CHECK_TEXTS)
    for check in checks:
        text = check["text"]
        # the SentencePiece model itself (BOS added; it knows no <think>, <s> or </s> in text)
        plain = text and "<think>" not in text and "<s>" not in text
        sp_ids = [sp.bos_id()] + sp.encode(text) if plain else None
        same = "-" if sp_ids is None else check["ids"] == sp_ids
        print(f"  tok {text[:40]!r}: {check['ids'][:12]}{'...' if len(check['ids']) > 12 else ''} "
              f"{tok.convert_ids_to_tokens(check['ids'][:8])}, same as sentencepiece: {same}")
    decode_checks = []
    for text in SPM_DECODE_TEXTS:
        ids = tok(text)["input_ids"]
        decode_checks.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)})
    # an incomplete UTF-8 sequence (the first two bytes of "€") after BOS, then "▁a"
    ids = tok.convert_tokens_to_ids(["<s>", "<0xE2>", "<0x82>", "▁a"])
    decode_checks.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)})
    for check in decode_checks:
        print(f"  decode {check['ids']} -> {check['text']!r}")
    for key, probe in probes.items():
        print(f"  probe {key} = false: tok('Hallo Welt') = {probe('Hallo Welt')['input_ids']} "
              f"(file: {tok('Hallo Welt')['input_ids']}), tokenizer JSON unchanged: "
              f"{tokenizer_json_summary(probe) == (summary, merges)}")
    merges_text = "\n".join(f"{left} {right}" for left, right in merges)
    expected = {"config": derived_config(model), "tokenizer_checks": checks,
                "decode_checks": decode_checks, "tokenizer_json_summary": summary,
                "merges_head": merges[:20], "merges_count": len(merges),
                "merges_sha256": hashlib.sha256(merges_text.encode("utf-8")).hexdigest()}
    write_json(expected, os.path.join(out, "tiny_spm_expected.json"))
    print(f"  config: {expected['config']}")
    print(f"  {len(merges)} merges, first: {merges[:20]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/gguf")
    ap.add_argument("--hf", default="tests/fixtures/llama/tied_gqa", help="HF model to convert")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families-only", action="store_true",
                    help="write only the family fixtures (tiny_qwen2, tiny_qwen3, tiny_llama3_rope)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    if args.families_only:
        write_family_ggufs(args.out, os.path.dirname(os.path.abspath(args.hf)))
        return
    print("tensor formats:")
    write_quant_fixtures(args.out, np.random.default_rng(SEED))
    print("tiny llama:")
    write_tiny_llama(args.out, args.hf)
    print("tiny spm:")
    write_tiny_spm(args.out)
    print("families:")
    write_family_ggufs(args.out, os.path.dirname(os.path.abspath(args.hf)))

    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"  {name}: {size} bytes")
    print(f"total {total} bytes in {args.out}")
    assert total < 1_000_000


if __name__ == "__main__":
    main()
