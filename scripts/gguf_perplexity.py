#!/usr/bin/env python3
"""Perplexity of GGUF files under llama.cpp itself, on the eval definition of
scripts/reference_eval.py: each record of a JSONL file tokenized on its own (llama.cpp's
tokenizer, with BOS as the model asks for it), cut to --max-len tokens, every token after the
first predicted from the ones before; the loss is the mean over all scored tokens.

Runs in the llama.cpp venv that scripts/setup-llamacpp.sh makes (llama_cpp, numpy):

  ~/.cache/feinschliff/llamacpp-venv/bin/python scripts/gguf_perplexity.py \\
      --data data/corpora/de-admin/valid.jsonl --max-len 512 a-f32.gguf a-q8_0.gguf ...

Prints one JSON line per file: loss, perplexity, scored tokens, seconds.
"""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def log_softmax_at(logits, targets):
    """log p(target) of each row of logits [n, vocab]."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return logits[np.arange(len(targets)), targets] - log_norm


def score(path, texts, max_len, threads):
    llm = Llama(model_path=path, n_ctx=max_len, n_batch=max_len, logits_all=True,
                verbose=False, n_threads=threads)
    nll, tokens, start = 0.0, 0, time.time()
    for text in texts:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=llm._model.add_bos_token(), special=False)
        ids = ids[:max_len]
        if len(ids) < 2:
            continue
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids) - 1])
        nll -= log_softmax_at(logits, np.array(ids[1:])).sum()
        tokens += len(ids) - 1
    loss = nll / tokens
    return {"file": path, "loss": loss, "perplexity": float(np.exp(loss)), "tokens": tokens,
            "seconds": round(time.time() - start, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--field", default="text")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N records (0 = all)")
    ap.add_argument("gguf", nargs="+")
    args = ap.parse_args()
    with open(args.data, encoding="utf-8") as f:
        texts = [json.loads(line)[args.field] for line in f if line.strip()]
    texts = texts[: args.limit or None]
    for path in args.gguf:
        print(json.dumps(score(path, texts, args.max_len, args.threads)), flush=True)


if __name__ == "__main__":
    main()
