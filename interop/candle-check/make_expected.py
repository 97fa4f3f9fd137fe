#!/usr/bin/env python3
"""Reference logits for candle-check, computed with Hugging Face transformers.

Usage:
    python make_expected.py MODEL_DIR --ids 5,17,42,8,... --out EXPECTED.safetensors

MODEL_DIR is a Hugging Face Llama directory (e.g. a `feinschliff export merged` output). It is
loaded with `AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32,
attn_implementation="eager")` on the CPU, the ids run as one sequence from position 0, and
EXPECTED gets the tensors

    logits     f32 [seq, vocab]   the logits of every position
    input_ids  i64 [seq]          the ids (candle-check checks them against --ids, or uses them)

and metadata naming the transformers and torch versions. Needs torch, transformers and
safetensors, e.g. the venv ~/.cache/peft-bench/venv.
"""

import argparse
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--ids", required=True, help="comma-separated token ids")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    args = parser.parse_args()

    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    if not ids:
        parser.error("--ids is empty")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    vocab = model.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        parser.error(f"ids {bad} outside the vocabulary ({vocab})")

    input_ids = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits[0]
    logits = logits.to(torch.float32).contiguous()
    assert logits.shape == (len(ids), vocab), logits.shape

    save_file(
        {"logits": logits, "input_ids": input_ids[0].contiguous()},
        args.out,
        metadata={
            "producer": "interop/candle-check/make_expected.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "attn_implementation": "eager",
        },
    )
    print(f"wrote {args.out}: logits {list(logits.shape)} for {len(ids)} ids", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
