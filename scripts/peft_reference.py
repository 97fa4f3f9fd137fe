#!/usr/bin/env python3
r"""The PyTorch + PEFT LoRA training benchmark feinschliff's speed and memory are compared with.

One configuration per process (peak RSS is per process), on the CPU:

  --mode fp32           base weights and compute in float32
  --mode fp32_gc        float32 plus (non-reentrant) gradient checkpointing
  --mode autocast_bf16  float32 weights, forward under torch.autocast("cpu", bfloat16)
  --mode bf16           base loaded in bfloat16 from --model-bf16 (PEFT keeps the LoRA weights
                        in float32: autocast_adapter_dtype=True, its default)
  --mode bnb_nf4        QLoRA as PEFT users run it: the base's linear layers loaded through
                        bitsandbytes (BitsAndBytesConfig load_in_4bit, nf4, no double
                        quantization, compute dtype bfloat16) on the CPU backend of
                        bitsandbytes >= 0.49; embedding and head stay float32

Setup, the same for every mode and the same as feinschliff's side of scripts/bench-vs-peft.sh:
  * model: a Hugging Face model directory (config.json, model.safetensors, tokenizer files),
    by default checkpoints/base/smollm2-135m-instruct as scripts/fetch-smollm2.sh imports it
    (float32); --mode bf16 loads --model-bf16 (default: the --model path + "-bf16", made by
    `scripts/fetch-smollm2.sh DIR --dtype bf16`); use_cache off; transformers' default
    attention (sdpa) unless --attn says otherwise;
  * LoRA: PEFT LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
    task_type="CAUSAL_LM") on q/k/v/o/gate/up/down_proj, PEFT's default initialisation;
  * optimiser: torch.optim.AdamW(lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    constant learning rate, clip_grad_norm_(1.0), zero_grad(set_to_none=True);
    torch.manual_seed(0); torch.set_num_threads(--threads);
  * data: the "text" of every record of data/corpora/de-admin/train.jsonl (or --data), each
    tokenised without special tokens and followed by <|endoftext|> (the tokenizer's EOS when
    the vocabulary has no such token); the stream is cut into blocks of --seq tokens (the tail
    is dropped) and step i (from 0) trains on blocks i*B … i*B+B-1, modulo the block count;
  * loss: transformers' causal-LM loss with labels = input_ids (mean over B*(S-1) positions).

Measurement:
  * step time: wall time (time.perf_counter) of forward + backward + clipping + optimiser step
    + zero_grad, split into fwd_s / bwd_s / opt_s; tok_per_s = B*S / step time;
  * steady state: the median over the steps after --warmup;
  * peak RSS: getrusage(RUSAGE_SELF).ru_maxrss, the whole process so far (loading included),
    taken right after the last step as peak_rss_mb_train;
  * a shared machine: unless --no-quiet, the run waits before it starts and before every step
    (untimed) until the rest of the machine uses under 5% of the CPUs, and each step records how
    much CPU other processes used meanwhile (foreign_frac, from /proc/stat); steps with foreign
    load >= 5% are left out of the *_clean medians (given when at least 5 steps are clean).

Output: one JSON line per record on stdout (and in --log FILE): "start", "data", "model", one
"step" per step, and last the "summary" ({"event": "summary", ..., "median_tok_per_s": ...,
"peak_rss_mb_train": ..., ...}), which scripts/bench-vs-peft.sh reads.

Usage (the venv from scripts/setup-venv.sh, the model from scripts/fetch-smollm2.sh):
  ~/.cache/peft-bench/venv/bin/python scripts/peft_reference.py --mode fp32 --steps 10
  ~/.cache/peft-bench/venv/bin/python scripts/peft_reference.py --mode bf16 \
      --model-bf16 checkpoints/base/smollm2-135m-instruct-bf16 --log runs/peft-bf16.jsonl
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "checkpoints" / "base" / "smollm2-135m-instruct"
DEFAULT_DATA = ROOT / "data" / "corpora" / "de-admin" / "train.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ["fp32", "fp32_gc", "autocast_bf16", "bf16", "bnb_nf4"]
QUIET = 0.05  # share of all CPUs other processes may use for the machine to count as quiet


# --- the machine ----------------------------------------------------------------------------

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class CpuMeter:
    """CPU use of this process and of everything else on the machine since the last mark()."""

    TICKS = os.sysconf("SC_CLK_TCK")
    CPUS = os.cpu_count() or 1

    def __init__(self):
        self.mark()

    @staticmethod
    def _machine():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal …
        return v[0] + v[1] + v[2] + v[5] + v[6], (v[7] if len(v) > 7 else 0)

    @staticmethod
    def _own():
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def mark(self):
        self.t = time.perf_counter()
        self.busy, self.steal = self._machine()
        self.own = self._own()

    def read(self):
        """{"foreign_frac", "own_frac", "steal_frac"} since mark(), as shares of all CPUs; marks."""
        t = time.perf_counter()
        busy, steal = self._machine()
        own = self._own()
        capacity = max(t - self.t, 1e-9) * self.TICKS * self.CPUS
        out = dict(foreign_frac=round(max(0, (busy - self.busy) - (own - self.own)) / capacity, 3),
                   own_frac=round((own - self.own) / capacity, 3),
                   steal_frac=round((steal - self.steal) / capacity, 3))
        self.mark()
        return out


def wait_quiet(window=3.0, give_up_s=3600.0):
    """Blocks until other processes use < QUIET of the CPUs for one window; returns the wait."""
    started = time.time()
    meter = CpuMeter()
    while True:
        time.sleep(window)
        use = meter.read()
        waited = round(time.time() - started, 1)
        if use["foreign_frac"] < QUIET:
            return dict(waited_s=waited, **use)
        if waited > give_up_s:
            print(f"[quiet] still busy after {waited} s, starting anyway: {use}", file=sys.stderr, flush=True)
            return dict(waited_s=waited, gave_up=True, **use)
        print(f"[quiet] machine busy ({use}), waiting", file=sys.stderr, flush=True)


# --- data -----------------------------------------------------------------------------------

def read_texts(path, field):
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not valid JSON ({e.msg})")
            text = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise SystemExit(f"{path}:{n}: no string field {field!r}")
            texts.append(text)
    return texts


def token_blocks(tok, texts, seq):
    """[n_blocks, seq] token ids: each text without special tokens, then <|endoftext|>."""
    import torch

    vocab = tok.get_vocab()
    sep = vocab["<|endoftext|>"] if "<|endoftext|>" in vocab else tok.eos_token_id
    if sep is None:
        raise SystemExit("the tokenizer has neither <|endoftext|> nor an EOS token")
    ids = []
    for doc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(doc)
        ids.append(sep)
    n = len(ids) // seq
    return len(ids), torch.tensor(ids[: n * seq], dtype=torch.long).view(n, seq)


# --- the run --------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="HF model directory (default: %(default)s)")
    ap.add_argument("--model-bf16", default=None,
                    help="bfloat16 copy for --mode bf16 (default: the --model path + '-bf16')")
    ap.add_argument("--mode", choices=MODES, default="fp32")
    ap.add_argument("--batch", type=int, default=4, help="micro-batch (default: %(default)s)")
    ap.add_argument("--seq", type=int, default=512, help="tokens per row (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=10, help="steps run (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL training text (default: %(default)s)")
    ap.add_argument("--text-field", default="text", help="JSONL key of the text (default: %(default)s)")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice)")
    ap.add_argument("--log", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--tag", default=None, help="label of the run (default: MODE_bBATCHxSEQ)")
    ap.add_argument("--no-quiet", action="store_true",
                    help="do not wait for an idle machine (foreign CPU use is still recorded)")
    args = ap.parse_args()
    if args.batch < 1 or args.seq < 2 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit("--batch, --steps and --threads must be >= 1, --seq >= 2, --warmup >= 0")

    model_dir = (args.model_bf16 or args.model.rstrip("/") + "-bf16") if args.mode == "bf16" else args.model
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        hint = " --dtype bf16" if args.mode == "bf16" else ""
        raise SystemExit(f"{model_dir}: not a model directory (no config.json); make it with "
                         f"scripts/fetch-smollm2.sh {model_dir}{hint}")
    if not os.path.isfile(args.data):
        raise SystemExit(f"--data {args.data}: no such file")
    texts = read_texts(args.data, args.text_field)

    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.log:
        os.makedirs(os.path.dirname(args.log) or ".", exist_ok=True)
    log = open(args.log, "w", encoding="utf-8") if args.log else None

    def emit(record):
        line = json.dumps(record)
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    tag = args.tag or f"{args.mode}_b{args.batch}x{args.seq}"
    quiet = None if args.no_quiet else wait_quiet()
    emit(dict(event="start", tag=tag, argv=sys.argv, quiet_check=quiet, torch=torch.__version__,
              transformers=transformers.__version__, peft=peft.__version__,
              python=platform.python_version(), threads=torch.get_num_threads(),
              cpu_capability=torch.backends.cpu.get_cpu_capability(),
              env={k: os.environ[k] for k in ("LD_PRELOAD", "MALLOC_CONF", "OMP_NUM_THREADS",
                                               "KMP_AFFINITY", "OMP_PROC_BIND") if k in os.environ},
              time=time.strftime("%Y-%m-%d %H:%M:%S")))

    tok = AutoTokenizer.from_pretrained(model_dir)
    n_tokens, blocks = token_blocks(tok, texts, args.seq)
    if blocks.shape[0] == 0:
        raise SystemExit(f"--data {args.data}: {n_tokens} tokens, fewer than one block of --seq {args.seq}")
    emit(dict(event="data", path=args.data, documents=len(texts), tokens=n_tokens,
              blocks=int(blocks.shape[0]), seq=args.seq))

    rss_before = rss_mb()
    started = time.perf_counter()
    kwargs = dict(dtype=torch.bfloat16 if args.mode == "bf16" else torch.float32)
    if args.attn:
        kwargs["attn_implementation"] = args.attn
    if args.mode == "bnb_nf4":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if args.mode == "fp32_gc":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             bias="none", task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    emit(dict(event="model", path=model_dir, load_s=round(time.perf_counter() - started, 3),
              attn_implementation=model.config._attn_implementation,
              gradient_checkpointing=args.mode == "fp32_gc",
              trainable_params=sum(p.numel() for p in trainable),
              all_params=sum(p.numel() for p in model.parameters()),
              adapter_dtypes=sorted({str(p.dtype) for p in trainable}),
              base_dtypes=sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad}),
              rss_before_load_mb=round(rss_before, 1), rss_after_load_mb=round(rss_mb(), 1)))

    optimizer = torch.optim.AdamW(trainable, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.mode == "autocast_bf16"
                else contextlib.nullcontext)
    n_blocks = blocks.shape[0]
    tokens_per_step = args.batch * args.seq
    measured = []  # (step_s, fwd_s, bwd_s, opt_s, foreign_frac) after warm-up
    losses = []
    meter = CpuMeter()
    for step in range(args.steps):
        x = blocks[[(step * args.batch + j) % n_blocks for j in range(args.batch)]]
        waited = 0.0 if args.no_quiet else wait_quiet(window=1.0)["waited_s"]
        meter.mark()
        t0 = time.perf_counter()
        with autocast():
            out = model(input_ids=x, labels=x)
        loss = out.loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        cpu = meter.read()
        del out
        step_s = t3 - t0
        losses.append(loss.item())
        emit(dict(event="step", step=step + 1, loss=round(losses[-1], 5), grad_norm=round(float(grad_norm), 4),
                  step_s=round(step_s, 4), fwd_s=round(t1 - t0, 4), bwd_s=round(t2 - t1, 4),
                  opt_s=round(t3 - t2, 4), tok_per_s=round(tokens_per_step / step_s, 2),
                  waited_quiet_s=waited, rss_mb=round(rss_mb(), 1), peak_rss_mb=round(peak_rss_mb(), 1), **cpu))
        if step >= args.warmup:
            measured.append((step_s, t1 - t0, t2 - t1, t3 - t2, cpu["foreign_frac"]))
    peak_train = round(peak_rss_mb(), 1)

    summary = dict(event="summary", tag=tag, mode=args.mode, batch=args.batch, seq=args.seq,
                   tokens_per_step=tokens_per_step, steps=args.steps, warmup=args.warmup,
                   measured_steps=len(measured))
    if measured:
        steps = [m[0] for m in measured]
        median = statistics.median(steps)
        summary.update(median_step_s=round(median, 3), mean_step_s=round(statistics.mean(steps), 3),
                       min_step_s=round(min(steps), 3), max_step_s=round(max(steps), 3),
                       median_tok_per_s=round(tokens_per_step / median, 2),
                       median_fwd_s=round(statistics.median(m[1] for m in measured), 3),
                       median_bwd_s=round(statistics.median(m[2] for m in measured), 3),
                       median_opt_s=round(statistics.median(m[3] for m in measured), 4))
        foreign = [m[4] for m in measured]
        clean = [m[0] for m in measured if m[4] < QUIET]
        summary.update(foreign_frac_median=statistics.median(foreign), foreign_frac_max=max(foreign),
                       steps_with_foreign_load=len(measured) - len(clean))
        if len(clean) >= 5:
            summary.update(median_step_s_clean=round(statistics.median(clean), 3),
                           median_tok_per_s_clean=round(tokens_per_step / statistics.median(clean), 2))
    else:
        print(f"no step after --warmup {args.warmup}: no medians", file=sys.stderr)
    summary.update(first_loss=losses[0], last_loss=losses[-1], peak_rss_mb_train=peak_train,
                   time_end=time.strftime("%Y-%m-%d %H:%M:%S"))
    emit(summary)
    if log:
        log.close()


if __name__ == "__main__":
    main()
