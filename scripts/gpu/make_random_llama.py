"""A Llama checkpoint with random weights in Hugging Face layout, for speed benchmarks only.

The default shape is 1B-class (Llama-3.2-1B's layers: hidden 2048, 16 layers, 32 heads / 8 KV
heads, intermediate 8192) with SmolLM2's 49152-token vocabulary, so the tokenizer of
`checkpoints/base/smollm2-135m-instruct` (copied in) fits it and feinschliff's data pipeline
runs unchanged. Weights are bf16 (about 2.1 GB).

Usage: python make_random_llama.py OUT_DIR [--tokenizer-from DIR] [--hidden 2048 --layers 16 ...]
"""

import argparse
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default="checkpoints/base/smollm2-135m-instruct")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        source = Path(args.tokenizer_from) / name
        if source.exists():
            shutil.copy(source, out / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {params / 1e9:.2f} B parameters, {args.dtype}")


if __name__ == "__main__":
    main()
