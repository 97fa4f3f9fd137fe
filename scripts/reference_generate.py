#!/usr/bin/env python3
"""Greedy generation speed of transformers, the reference for `feinschliff generate`.

Loads MODEL_DIR in float32 with `sdpa` attention on the CPU (--threads, default 2), tokenizes
PROMPT with the model's tokenizer and times `generate(max_new_tokens=N, min_new_tokens=N,
do_sample=False)` (prefill and decode together), then prints the new tokens per second.

Usage: ~/.cache/peft-bench/venv/bin/python scripts/reference_generate.py MODEL_DIR PROMPT
           [--new-tokens 128] [--threads 2]
"""
import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("prompt")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    ids = AutoTokenizer.from_pretrained(args.model)(args.prompt, return_tensors="pt").input_ids
    n = args.new_tokens
    with torch.no_grad():
        start = time.time()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        seconds = time.time() - start
    new = out.shape[1] - ids.shape[1]
    print(f"prompt {ids.shape[1]} tokens; transformers generate: {new} new tokens in "
          f"{seconds:.2f} s = {new / seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
