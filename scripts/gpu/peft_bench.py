"""PyTorch + PEFT LoRA training speed on any device (CPU or CUDA), the GPU counterpart of
scripts/peft_reference.py (which is CPU-only): the same LoRA setup as feinschliff's
`bench` (r 16, alpha 32, dropout 0.05, all seven projections, AdamW lr 2e-4, gradient clipping
at 1.0), micro-batches of packed de-admin text, median step time after warm-up.

Prints one JSON line: tokens_per_second (median), step_seconds, peak_gpu_mb
(torch.cuda.max_memory_allocated; the allocator's own view, while nvidia-smi shows the
process's reserved memory too), peak_rss_mb.

Usage: python peft_bench.py --model DIR [--device cuda:0] [--mode bf16|autocast_bf16|fp32]
       [--batch 4 --seq 512 --steps 10 --warmup 3] [--data data/corpora/de-admin/train.jsonl]
       (--data defaults to the bundled corpus of this repository, found from the script's place)
"""

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# data/corpora/de-admin/train.jsonl of the repository; a copy of scripts/gpu next to a
# train.jsonl (see BENCHMARKS.md, "GPU benchmark") passes --data train.jsonl instead
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "corpora" / "de-admin" / "train.jsonl"


def batches(tokenizer, path, batch, seq):
    ids = []
    with open(path) as f:
        for line in f:
            ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= 64 * batch * seq:
                break
    rows = [ids[k : k + seq] for k in range(0, len(ids) - seq, seq)]
    while True:
        for k in range(0, len(rows) - batch + 1, batch):
            yield torch.tensor(rows[k : k + batch])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--mode", default="bf16", choices=["bf16", "autocast_bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.mode == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if args.mode == "bf16":  # adapters and optimizer state in f32, as feinschliff keeps them
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mode == "autocast_bf16")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    data = batches(tokenizer, args.data, args.batch, args.seq)
    for step in range(args.warmup + args.steps):
        ids = next(data).to(device)
        sync()
        started = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    step_seconds = statistics.median(times)
    print(json.dumps({
        "mode": args.mode, "device": args.device, "batch": args.batch, "seq": args.seq,
        "tokens_per_second": args.batch * args.seq / step_seconds, "step_seconds": step_seconds,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": float(loss),
    }))


if __name__ == "__main__":
    main()
