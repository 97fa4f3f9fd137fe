#!/usr/bin/env python3
"""Writes train/tests/fixtures/optim.json: PyTorch's AdamW, gradient clipping and transformers'
learning-rate schedules on fixed inputs, which train/tests/optim.rs replays through
feinschliff's optimizer path (`adamw(config)`, `clip_global_norm`, `learning_rate`).

"runs": each run has a `[train]` configuration (lr, beta1, beta2, eps, weight_decay,
max_grad_norm, schedule, warmup_steps, total_steps), three f32 parameter tensors and, for each
of STEPS steps, one gradient per tensor. The run is what a training run does at each step:

  lr   = the transformers scheduler's learning rate of this step (LambdaLR over AdamW)
  norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) (without max_grad_norm: the
         global norm, nothing clipped)
  torch.optim.AdamW(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay).step()

and records per step: `lr`, `norm` (before clipping), `clipped` (the gradients after
clipping) and `params` (after the step). Gradients are drawn at scales that clip on some
steps and not on others; one step's norm lies within 1e-6 below max_grad_norm, where PyTorch
still scales by max_norm / (norm + 1e-6); some elements are tiny or zero, so that eps and its
placement matter.

"schedules": for each transformers `get_{constant,linear,cosine}_schedule_with_warmup` and a
few (warmup, total) pairs, the learning rate of every step 0 ..= total + 2.

All values are f32 values written exactly as doubles (or the doubles of the schedules).

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/make_optim_fixtures.py
      [--out train/tests/fixtures/optim.json]
"""
import argparse
import json

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

STEPS = 6
SHAPES = [[4, 3], [2, 5], [3, 3]]
SCHEDULERS = {
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
}

# name, [train] keys, global norm of each step's gradients (None: random scale)
RUNS = [
    dict(name="defaults", seed=11,
         train=dict(lr=2e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    max_grad_norm=1.0, schedule="constant", warmup_steps=0, total_steps=STEPS),
         norms=[3.0, 0.4, 1.7, 0.05, 2.5, 0.9]),
    # Large lr, weight decay, eps and small betas: every term of the update shows.
    dict(name="every_term", seed=12,
         train=dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.1,
                    max_grad_norm=0.01, schedule="cosine", warmup_steps=2, total_steps=STEPS),
         norms=[0.05, 0.004, 0.01 - 5e-7, 0.002, 0.2, 0.011]),
    dict(name="no_clipping", seed=13,
         train=dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.01,
                    max_grad_norm=0.0, schedule="linear", warmup_steps=1, total_steps=STEPS),
         norms=[5.0, 0.01, 1.0, 30.0, 0.2, 2.0]),
]

SCHEDULE_CASES = [(0, 10), (3, 10), (1, 2), (5, 5), (7, 4), (0, 1)]


def f32_list(t):
    return [float(v) for v in t.detach().to(torch.float32).flatten().tolist()]


def gradients(gen, norm):
    """One gradient per tensor with global L2 norm `norm`, some elements tiny or zero."""
    grads = [torch.randn(shape, generator=gen) for shape in SHAPES]
    grads[0][0, 0] = 0.0
    grads[1][1, 2] *= 1e-4
    grads[2][2, 1] *= 1e-6
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return [(g * (norm / total)).to(torch.float32) for g in grads]


def run(spec):
    cfg = spec["train"]
    gen = torch.Generator().manual_seed(spec["seed"])
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.5) for shape in SHAPES]
    initial = [f32_list(p) for p in params]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                            eps=cfg["eps"], weight_decay=cfg["weight_decay"], foreach=False)
    sched = SCHEDULERS[cfg["schedule"]](opt, cfg["warmup_steps"], cfg["total_steps"])
    steps = []
    for norm in spec["norms"]:
        grads = gradients(gen, norm)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if cfg["max_grad_norm"] > 0:
            total = torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        else:
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
        lr = sched.get_last_lr()[0]
        clipped = [f32_list(p.grad) for p in params]
        opt.step()
        sched.step()
        steps.append(dict(grads=[f32_list(g) for g in grads], lr=lr, norm=float(total),
                          clipped=clipped, params=[f32_list(p) for p in params]))
    return dict(name=spec["name"], train=cfg, shapes=SHAPES, initial=initial, steps=steps)


def schedules():
    out = []
    for name, make in SCHEDULERS.items():
        for warmup, total in SCHEDULE_CASES:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
            sched = make(opt, warmup, total)
            lrs = []
            for _ in range(total + 3):
                lrs.append(sched.get_last_lr()[0])
                opt.step()
                sched.step()
            out.append(dict(schedule=name, lr=3e-4, warmup_steps=warmup, total_steps=total,
                            lrs=lrs))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="train/tests/fixtures/optim.json")
    args = parser.parse_args()
    fixture = dict(
        note="made by scripts/make_optim_fixtures.py with torch " + torch.__version__,
        runs=[run(spec) for spec in RUNS],
        schedules=schedules(),
    )
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
