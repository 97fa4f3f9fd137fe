#!/usr/bin/env python3
"""Writes the broken files of feinschliff's bad-input corpus (tests/bad_inputs/files/) from the
tiny fixture model and GGUF. Plain Python 3, no packages. The cases that use them are listed in
cases.toml and run by tests/bad_inputs.rs.

Usage: python3 tests/bad_inputs/make.py
"""
import hashlib
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
TINY = os.path.join(ROOT, "tests", "fixtures", "llama", "tied_gqa")
OUT = os.path.join(HERE, "files")


def write(name, data):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def safetensors_parts():
    raw = open(os.path.join(TINY, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def q_proj_adapter_tensors():
    """A rank-4 adapter's safetensors for the tiny model's q_proj in both layers (B = 0)."""
    a = struct.pack("<" + "f" * 4 * 32, *([0.01] * 128))
    b = struct.pack("<" + "f" * 32 * 4, *([0.0] * 128))
    tensors, data = {"__metadata__": {"format": "pt"}}, b""
    for layer in range(2):
        for kind, shape, values in [("A", [4, 32], a), ("B", [32, 4], b)]:
            name = f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{kind}.weight"
            tensors[name] = {"dtype": "F32", "shape": shape,
                             "data_offsets": [len(data), len(data) + len(values)]}
            data += values
    return safetensors(tensors, data)


def safetensors(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# GGUF value types with a fixed size: type id -> bytes.
GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_ALIGNMENT = 32


def gguf_skip(raw, pos, ty):
    """The position after the GGUF value of type `ty` at `pos`."""
    if ty in GGUF_FIXED:
        return pos + GGUF_FIXED[ty]
    if ty == 8:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    item, n = struct.unpack_from("<IQ", raw, pos)
    pos += 12
    for _ in range(n):
        pos = gguf_skip(raw, pos, item)
    return pos


def gguf_parts(raw):
    """The metadata [(key, type, raw value bytes)], tensors [[name, dims, type, offset]] and data
    section of a GGUF v3 file with the default alignment."""
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    pos, metadata, tensors = 24, [], []

    def name():
        nonlocal pos
        n = struct.unpack_from("<Q", raw, pos)[0]
        pos += 8 + n
        return raw[pos - n:pos].decode()

    for _ in range(n_kv):
        key = name()
        ty = struct.unpack_from("<I", raw, pos)[0]
        end = gguf_skip(raw, pos + 4, ty)
        metadata.append((key, ty, raw[pos + 4:end]))
        pos = end
    for _ in range(n_tensors):
        tensor = name()
        n_dims = struct.unpack_from("<I", raw, pos)[0]
        dims = list(struct.unpack_from("<%dQ" % n_dims, raw, pos + 4))
        ty, offset = struct.unpack_from("<IQ", raw, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append([tensor, dims, ty, offset])
    pos += -pos % GGUF_ALIGNMENT
    return metadata, tensors, raw[pos:]


def gguf_str(text):
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf(metadata, tensors, data):
    """A GGUF v3 file (default alignment) from the parts of `gguf_parts`."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, ty, value in metadata:
        out += gguf_str(key) + struct.pack("<I", ty) + value
    for tensor, dims, ty, offset in tensors:
        out += gguf_str(tensor) + struct.pack("<I", len(dims))
        out += struct.pack("<%dQ" % len(dims), *dims) + struct.pack("<IQ", ty, offset)
    return out + b"\0" * (-len(out) % GGUF_ALIGNMENT) + data


def gguf_variant(raw, tensors=None, metadata=None):
    """tiny_llama.gguf with its tensor records and metadata passed through the given edits."""
    meta, infos, data = gguf_parts(raw)
    meta = metadata(meta) if metadata else meta
    infos = tensors(infos) if tensors else infos
    return gguf(meta, infos, data)


def set_dims(infos, name, dims):
    return [[n, dims if n == name else d, ty, off] for n, d, ty, off in infos]


def write_gguf_cases(raw):
    # An array of u64 whose count fits the rest of the file at one byte per element, not at
    # eight: the reader must refuse it before allocating.
    meta, infos, data = gguf_parts(raw)
    assert gguf(meta, infos, data) == raw
    rest = len(gguf([], infos, data))
    oversized = struct.pack("<IQ", 10, rest // 2)
    write("gguf/metadata_array_oversized.gguf",
          gguf(meta + [("feinschliff.oversized", 9, oversized)], infos, data))
    write("gguf/zero_dims.gguf",
          gguf_variant(raw, tensors=lambda t: set_dims(t, "blk.0.ffn_up.weight", [32, 0])))
    write("gguf/absurd_dims.gguf",
          gguf_variant(raw, tensors=lambda t: set_dims(t, "blk.0.attn_q.weight", [0, 1 << 60])))
    write("gguf/absurd_block_count.gguf", gguf_variant(raw, metadata=lambda m: [
        (k, 10, struct.pack("<Q", 10 ** 17)) if k == "llama.block_count" else (k, ty, v)
        for k, ty, v in m]))
    write("gguf/duplicate_layer.gguf", gguf_variant(raw, tensors=lambda t: t + [
        ["blk.01" + n[len("blk.1"):], d, ty, off] for n, d, ty, off in t
        if n == "blk.1.attn_norm.weight"]))


def file_sum(data):
    """A checkpoint manifest's entry for a file holding `data`."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def main():
    rng = random.Random(7)
    raw = open(os.path.join(TINY, "model.safetensors"), "rb").read()
    header, data = safetensors_parts()
    write("safetensors_truncated/model.safetensors", raw[:3000])
    write("safetensors_garbage/model.safetensors", bytes(rng.randrange(256) for _ in range(256)))
    write("safetensors_empty/model.safetensors", b"")
    lies = json.loads(json.dumps(header))
    lies["model.norm.weight"]["data_offsets"] = [len(data), len(data) + 128]
    write("safetensors_offsets_lie/model.safetensors", safetensors(lies, data))
    huge = json.loads(json.dumps(header))
    write("safetensors_header_length_lies/model.safetensors", struct.pack("<Q", 1 << 40) + raw[8:64])
    shape = json.loads(json.dumps(header))
    shape["model.embed_tokens.weight"]["shape"] = [32, 96]
    write("safetensors_wrong_shape/model.safetensors", safetensors(shape, data))
    dtype = json.loads(json.dumps(header))
    dtype["model.norm.weight"]["dtype"] = "I32"
    write("safetensors_wrong_dtype/model.safetensors", safetensors(dtype, data))
    del huge

    config = json.load(open(os.path.join(TINY, "config.json")))
    write("config_invalid_json/config.json", json.dumps(config)[:-20])
    missing = dict(config)
    del missing["hidden_size"]
    write("config_missing_key/config.json", json.dumps(missing, indent=1))
    wrong = dict(config)
    wrong["num_attention_heads"] = "four"
    write("config_wrong_type/config.json", json.dumps(wrong, indent=1))
    layers = dict(config, num_hidden_layers=10 ** 17)
    write("config_absurd_layers/config.json", json.dumps(layers, indent=1))
    # 4 and 2 heads of 8 + 2^63 wrap to the real widths 32 and 16 in 64-bit arithmetic.
    wrapping = dict(config, head_dim=8 + (1 << 63))
    write("config_wrapping_head_dim/config.json", json.dumps(wrapping, indent=1))

    write("data/malformed.jsonl", '{"text": "Der Antrag"}\n{"text": "Bescheid\n')
    write("data/missing_field.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    write("data/empty.jsonl", "")
    write("data/not_utf8.jsonl", b'{"text": "Stra\xdfe"}\n')
    write("data/unknown_role.jsonl",
          '{"messages": [{"role": "human", "content": "Hallo"}, {"role": "gpt", "content": "Guten Tag"}]}\n')
    write("data/garbage.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(200)))
    write("data/missing_column.csv", "body\nDer Antrag\n")
    write("data/chat.jsonl",
          '{"messages": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Guten Tag"}]}\n')

    write("template_syntax/chat_template.jinja", "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}\n")
    # Nested loops of 10^10 steps: rendering must stop at the template fuel, naming the file.
    hostile = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    write("template_hostile_jinja/chat_template.jinja", hostile)
    tokenizer_config = json.load(open(os.path.join(TINY, "tokenizer_config.json")))
    tokenizer_config["chat_template"] = hostile
    write("template_hostile_config/tokenizer_config.json", json.dumps(tokenizer_config, indent=2))

    # A tokenizer with four tokens more than the model's vocab_size (96): ids 96..99.
    tokenizer = json.load(open(os.path.join(TINY, "tokenizer.json")))
    vocab_size = config["vocab_size"]
    for i in range(4):
        tokenizer["added_tokens"].append({
            "id": vocab_size + i, "content": f"<|extra_{i}|>", "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True})
    write("tokenizer_over_vocab/tokenizer.json", json.dumps(tokenizer, indent=2, ensure_ascii=False))
    write("data/over_vocab.jsonl", '{"text": "Der Antrag <|extra_3|> ist fristgerecht einzureichen."}\n')

    gguf = open(os.path.join(ROOT, "tests", "fixtures", "gguf", "tiny_llama.gguf"), "rb").read()
    write("gguf/truncated.gguf", gguf[:5000])
    write("gguf/bad_magic.gguf", b"GGML" + gguf[4:4096])
    write("gguf/empty.gguf", b"")
    write_gguf_cases(gguf)

    # a DoRA adapter without its magnitude vectors
    dora = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "use_dora": True, "task_type": "CAUSAL_LM"}
    write("adapter_dora/adapter_config.json", json.dumps(dora, indent=1))
    write("adapter_dora/adapter_model.safetensors", q_proj_adapter_tensors())
    write("adapter_other_model/adapter_config.json", json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}, indent=1))
    a = struct.pack("<" + "f" * 4 * 64, *([0.01] * 256))
    b = struct.pack("<" + "f" * 64 * 4, *([0.0] * 256))
    write("adapter_other_model/adapter_model.safetensors", safetensors({
        "__metadata__": {"format": "pt"},
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
            {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, len(a)]},
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
            {"dtype": "F32", "shape": [64, 4], "data_offsets": [len(a), len(a) + len(b)]},
    }, a + b))

    dropout = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 1.5,
               "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    write("adapter_bad_dropout/adapter_config.json", json.dumps(dropout, indent=1))
    write("adapter_bad_dropout/adapter_model.safetensors", q_proj_adapter_tensors())

    write("configs/unknown_key.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n[train]\nlearning_rate = 1e-4\n')
    write("configs/r_zero.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[lora]\nr = 0\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n')
    write("configs/lr_negative.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n[train]\nlr = -1e-4\n')
    write("configs/max_len_zero.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\nmax_len = 0\n')
    write("configs/toml_syntax.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa\n')
    write("configs/missing_model.toml", '[model]\npath = "tests/bad_inputs/files/nothing_here"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n')
    write("configs/empty.toml", "")

    # A run whose only checkpoint has a manifest naming a file outside it: /dev/zero, which a
    # reader that follows the name reads forever.
    step = "run_manifest_dev_zero/checkpoints/step-000001/"
    files = {"state.json": '{"step": 1, "seed": 42, "config_hash": "x", "train_loss": 1.0, "eval_loss": null}\n',
             "optimizer.bpk": bytes(64)}
    manifest = {"/dev/zero": file_sum(b"")}
    for name, data in files.items():
        data = data.encode() if isinstance(data, str) else data
        write(step + name, data)
        manifest[name] = file_sum(data)
    write(step + "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
