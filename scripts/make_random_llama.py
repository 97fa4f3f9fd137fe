#!/usr/bin/env python3
"""A random-weight Llama model directory (Hugging Face layout) of a given shape, with the
tokenizer files of another model directory, for checks and benchmarks that need a model of a
particular shape rather than a trained one.

Runs in the reference venv (torch, transformers):

  ~/.cache/peft-bench/venv/bin/python scripts/make_random_llama.py --out DIR \\
      --tokenizer-from tests/fixtures/llama/tied_gqa --hidden 256 --intermediate 512 \\
      --layers 2 --heads 4 --kv-heads 2 [--untied] [--seed 0]

The vocabulary size is the tokenizer's. Weights are transformers' initialisation (normal,
std --init-std) under torch.manual_seed(--seed), stored in f32 safetensors. The GGUF check
(scripts/llamacpp_check.sh) uses hidden 256 so that rows are whole 256-value super-blocks and
llama.cpp's k-quants are exercised.
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "special_tokens_map.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--intermediate", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--untied", action="store_true", help="a separate lm_head")
    ap.add_argument("--init-std", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    source = Path(args.tokenizer_from)
    source_config = json.loads((source / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=source_config["vocab_size"],
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=source_config.get("max_position_embeddings", 2048),
        tie_word_embeddings=not args.untied,
        initializer_range=args.init_std,
        bos_token_id=source_config.get("bos_token_id"),
        eos_token_id=source_config.get("eos_token_id"),
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # non-trivial norms, so that a wrong norm placement shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
