#!/usr/bin/env python3
"""A random-weight checkpoint of a real model's shape (Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B,
Qwen2.5-7B), for memory and speed measurements of 1B–8B bases on machines that cannot download
the real weights. The config is the real model's (transformers' config values written out
below), the vocabulary size included; the tokenizer files are copied from another model
directory whose vocabulary is no larger (SmolLM2's, 49152 tokens, by default), so the data
pipeline runs unchanged and every id it gives has an embedding row.

Weights are normal(0, 0.02) in bf16 (norms 1.0), generated and written one tensor at a time
into safetensors shards of about 2 GB with model.safetensors.index.json, so an 8B checkpoint
(16 GB) is written in about 3 GB of memory. `feinschliff export gguf --model DIR` writes the
same weights as a GGUF file.

Runs in the reference venv (torch, safetensors):

  ~/.cache/peft-bench/venv/bin/python scripts/make_random_shape.py --shape llama-3.1-8b \\
      --out checkpoints/random/llama-3.1-8b [--tokenizer-from checkpoints/base/smollm2-135m-instruct]
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "special_tokens_map.json"]

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# transformers' config.json of each model (values as published), minus token ids.
SHAPES = {
    "llama-3.2-1b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                         max_position_embeddings=131072, rms_norm_eps=1e-5),
    "llama-3.2-3b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=3072,
                         intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                         max_position_embeddings=131072, rms_norm_eps=1e-5),
    "llama-3.1-8b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=False, rope_theta=500000.0,
                         rope_scaling={**LLAMA3_ROPE, "factor": 8.0},
                         max_position_embeddings=131072, rms_norm_eps=1e-5),
    "qwen2.5-7b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       use_sliding_window=False, sliding_window=131072, max_window_layers=28),
}

SHARD_BYTES = 2 << 30


def tensor_shapes(c):
    """(name, shape) of every tensor, in the order transformers saves them."""
    h, i = c["hidden_size"], c["intermediate_size"]
    d = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    yield "model.embed_tokens.weight", [c["vocab_size"], h]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}"
        yield f"{p}.self_attn.q_proj.weight", [q, h]
        yield f"{p}.self_attn.k_proj.weight", [kv, h]
        yield f"{p}.self_attn.v_proj.weight", [kv, h]
        if c["model_type"] == "qwen2":
            yield f"{p}.self_attn.q_proj.bias", [q]
            yield f"{p}.self_attn.k_proj.bias", [kv]
            yield f"{p}.self_attn.v_proj.bias", [kv]
        yield f"{p}.self_attn.o_proj.weight", [h, q]
        yield f"{p}.mlp.gate_proj.weight", [i, h]
        yield f"{p}.mlp.up_proj.weight", [i, h]
        yield f"{p}.mlp.down_proj.weight", [h, i]
        yield f"{p}.input_layernorm.weight", [h]
        yield f"{p}.post_attention_layernorm.weight", [h]
    yield "model.norm.weight", [h]
    if not c["tie_word_embeddings"]:
        yield "lm_head.weight", [c["vocab_size"], h]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-from", default="checkpoints/base/smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    source = Path(args.tokenizer_from)
    source_config = json.loads((source / "config.json").read_text())
    config = dict(SHAPES[args.shape], hidden_act="silu", torch_dtype="bfloat16",
                  bos_token_id=source_config.get("bos_token_id"),
                  eos_token_id=source_config.get("eos_token_id"))
    if source_config["vocab_size"] > config["vocab_size"]:
        raise SystemExit(f"{source}: its vocabulary is larger than {args.shape}'s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out / name)

    torch.manual_seed(args.seed)
    shards, shard, size, total = [], {}, 0, 0
    for name, shape in tensor_shapes(config):
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        total += t.numel()
        if size >= SHARD_BYTES:
            shards.append(list(shard))
            save_file(shard, str(out / f"shard-{len(shards):05d}.safetensors"), {"format": "pt"})
            shard, size = {}, 0
    if shard:
        shards.append(list(shard))
        save_file(shard, str(out / f"shard-{len(shards):05d}.safetensors"), {"format": "pt"})
    weight_map = {}
    for k, s in enumerate(shards, 1):
        names = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{k:05d}.safetensors").rename(out / names)
        weight_map.update({n: names for n in s})
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {out}: {args.shape}, {total} parameters, {len(shards)} shards")


if __name__ == "__main__":
    main()
