"""Fixture of model/tests/quant.rs: f32 rows and bitsandbytes' NF4 encoding of them
(`bitsandbytes.functional.quantize_4bit`, blocksize 64, `compress_statistics=False`, on the
CPU), so feinschliff's NF4 blocks are checked bit for bit against the reference QLoRA uses.

Run with the reference venv (scripts/setup-venv.sh installs bitsandbytes 0.50.2):
    ~/.cache/peft-bench/venv/bin/python scripts/make_nf4_fixture.py
Writes tests/fixtures/quant/nf4_expected.safetensors: `input` (f32 [8, 128]), `code` (f32 [16],
the code book), `packed` (u8 [512], two codes per byte, first value in the high nibble),
`absmax` (f32 [16], one per block of 64) and `dequantized` (f32 [8, 128],
`dequantize_4bit` of those). Rows: normal values at several scales, a zero row, values on the
midpoints between codes, one outlier, a negative maximum, tiny values.
"""

from pathlib import Path

import bitsandbytes.functional as F
import numpy as np
import torch
from safetensors.numpy import save_file

rng = np.random.default_rng(18)
code = F.get_4bit_type("nf4", device="cpu").float()
midpoints = ((code[:-1] + code[1:]) / 2).numpy()
rows = [
    rng.standard_normal(128),
    rng.standard_normal(128) * 1e3,
    np.zeros(128),
    np.tile(np.concatenate([midpoints, [1.0]]), 8) * 2.5,
    np.concatenate([rng.standard_normal(127) * 0.01, [40.0]]),
    np.concatenate([[-7.0], rng.uniform(-1, 1, 127)]),
    rng.standard_normal(128) * 1e-6,
    rng.uniform(-1, 1, 128),
]
x = torch.tensor(np.stack(rows).astype(np.float32))
packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
dequantized = F.dequantize_4bit(packed, state)
out = {
    "input": x.numpy(),
    "code": code.numpy(),
    "packed": packed.reshape(-1).numpy().astype(np.uint8),
    "absmax": state.absmax.float().numpy(),
    "dequantized": dequantized.float().numpy(),
}
path = Path(__file__).resolve().parent.parent / "tests/fixtures/quant/nf4_expected.safetensors"
save_file(out, str(path))
print(f"wrote {path}: " + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in out.items()))
