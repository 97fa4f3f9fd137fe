#!/usr/bin/env python3
"""NF4 codes and absolute maxima of feinschliff's encoder against bitsandbytes on a real model.

Emulates `model/src/quant/nf4.rs` (x · (1/absmax) in f32, clamped, the first f32 midpoint not
below it) in numpy for every `*proj.weight` of a safetensors checkpoint and compares codes and
absmax with `bitsandbytes.functional.quantize_4bit(blocksize=64, quant_type="nf4")`. The Rust
encoder equals this emulation bit for bit on random blocks (model/tests/quant.rs); this checks
the real weights' edge cases (values on midpoints, zero blocks).

Usage: python scripts/nf4_vs_bitsandbytes.py [checkpoints/base/smollm2-135m-instruct/model.safetensors]
"""
import sys

import numpy as np
import torch
import bitsandbytes.functional as F
from safetensors.numpy import load_file

PATH = sys.argv[1] if len(sys.argv) > 1 else "checkpoints/base/smollm2-135m-instruct/model.safetensors"
W = load_file(PATH)
code = np.array(F.get_4bit_type("nf4", device="cpu").float().numpy(), dtype=np.float32)
mid = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
bad = 0; total = 0
for name in sorted(W):
    if not name.endswith("proj.weight"): continue
    w = W[name].astype(np.float32).reshape(-1, 64)
    absmax = np.abs(w).max(axis=1)
    inv = (np.float32(1) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    scaled = np.clip(w * inv[:, None], -1, 1).astype(np.float32)
    ours = np.searchsorted(mid, scaled, side="left")  # first midpoint >= scaled
    q, st = F.quantize_4bit(torch.from_numpy(W[name].astype(np.float32)), blocksize=64, quant_type="nf4")
    b = q.numpy().reshape(-1)
    theirs = np.stack([b >> 4, b & 15], axis=1).reshape(-1)
    d = (ours.reshape(-1) != theirs).sum()
    bad += d; total += theirs.size
    am = st.absmax.numpy()
    if d or not np.array_equal(am, absmax):
        print(name, d, np.abs(am - absmax).max())
print("codes differing", bad, "of", total)
sys.exit(1 if bad else 0)
