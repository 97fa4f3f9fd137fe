#!/usr/bin/env python3
"""Reference evaluation loss/perplexity of a causal LM with Hugging Face transformers.

The eval definition that feinschliff's `eval` must reproduce:

- every JSON line of the data file is one record; its text (field `--field`) is tokenized
  on its own with `tok(text)` (the tokenizer's own special-token handling,
  add_special_tokens=True) and truncated to the first `--max-len` tokens;
- a record with n >= 2 tokens contributes the summed cross-entropy
  sum_{t=1}^{n-1} CE(logits[t-1], ids[t]) and n-1 scored tokens; shorter records
  contribute nothing (but are counted in "records");
- loss = total CE / total scored tokens, ppl = exp(loss).

One record per forward pass (batch 1, no padding), torch.no_grad, float32 model by default.

Usage:
  python scripts/reference_eval.py --model DIR --data FILE.jsonl [--max-len 512]
      [--field text] [--dtype float32] [--attn sdpa] [--threads 2] [--bnb-nf4]

Prints one JSON object: loss, ppl, tokens, records, seconds, tokens_per_s, model, data,
max_len, dtype, attn, transformers and torch versions.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_texts(path, field="text"):
    """The `field` of every non-blank JSON line of `path`, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f if line.strip()]


def evaluate(model, tok, texts, max_len):
    """Summed next-token cross-entropy over all records (see the module docstring)."""
    total_ce = 0.0
    total_tokens = 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text)["input_ids"][:max_len]
            if len(ids) < 2:
                continue
            input_ids = torch.tensor([ids], dtype=torch.long)
            logits = model(input_ids=input_ids, use_cache=False).logits[0].float()
            ce = F.cross_entropy(logits[:-1], input_ids[0, 1:], reduction="sum")
            total_ce += ce.item()
            total_tokens += len(ids) - 1
    loss = total_ce / total_tokens if total_tokens else float("nan")
    return {
        "max_len": max_len,
        "loss": loss,
        "ppl": math.exp(loss),
        "tokens": total_tokens,
        "records": len(texts),
    }


def load_model(path, dtype=torch.float32, attn="eager", bnb_nf4=False):
    kwargs = {}
    if bnb_nf4:
        # The QLoRA base as PEFT users load it: bitsandbytes NF4 (blocks of 64, f32 absmax, no
        # double quantization) on every linear layer but the head, products in `dtype`.
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **kwargs)
    model.eval()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model folder")
    ap.add_argument("--data", required=True, help="JSONL file, one record per line")
    ap.add_argument("--max-len", type=int, default=512, help="tokens kept per record")
    ap.add_argument("--field", default="text", help="JSON field holding the text")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bnb-nf4", action="store_true",
                    help="quantize the linear layers with bitsandbytes NF4 (feinschliff's base_quant nf4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model, DTYPES[args.dtype], args.attn, args.bnb_nf4)
    texts = load_texts(args.data, args.field)

    t0 = time.perf_counter()
    result = evaluate(model, tok, texts, args.max_len)
    seconds = time.perf_counter() - t0
    result.update(
        seconds=round(seconds, 3),
        tokens_per_s=round(result["tokens"] / seconds, 1),
        model=args.model,
        data=args.data,
        dtype=args.dtype,
        attn=args.attn,
        bnb_nf4=args.bnb_nf4,
        transformers=transformers.__version__,
        torch=torch.__version__,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
