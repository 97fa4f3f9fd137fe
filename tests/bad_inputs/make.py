#!/usr/bin/env python3
"""Writes the broken files of feinschliff's bad-input corpus (tests/bad_inputs/files/) from the
tiny fixture model and GGUF. Plain Python 3, no packages. The cases that use them are listed in
cases.toml and run by tests/bad_inputs.rs.

Usage: python3 tests/bad_inputs/make.py
"""
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


def safetensors(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


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

    adapter = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
               "use_dora": True, "task_type": "CAUSAL_LM"}
    write("adapter_dora/adapter_config.json", json.dumps(adapter, indent=1))
    write("adapter_dora/adapter_model.safetensors", safetensors({"__metadata__": {"format": "pt"}}, b""))
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

    write("configs/unknown_key.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n[train]\nlearning_rate = 1e-4\n')
    write("configs/r_zero.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[lora]\nr = 0\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n')
    write("configs/lr_negative.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n[train]\nlr = -1e-4\n')
    write("configs/max_len_zero.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\nmax_len = 0\n')
    write("configs/toml_syntax.toml", '[model]\npath = "tests/fixtures/llama/tied_gqa\n')
    write("configs/missing_model.toml", '[model]\npath = "tests/bad_inputs/files/nothing_here"\n[data]\ntrain = "tests/fixtures/eval_sample.jsonl"\n')
    write("configs/empty.toml", "")


if __name__ == "__main__":
    main()
