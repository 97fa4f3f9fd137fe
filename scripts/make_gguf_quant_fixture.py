"""Fixture of tests/gguf_export.rs: f32 rows and their Q8_0 / Q4_0 / Q5_0 / Q5_1 encodings by the
`gguf` Python package's reference quantizers (`gguf.quants.quantize`, which follow ggml's
`quantize_row_q8_0_ref` … `quantize_row_q5_1_ref`), so the Rust encoders are checked bit for bit.
(The package cannot quantize the k-quants; scripts/llamacpp_check.py checks those against
llama.cpp's own quantizer.)

Run with the reference venv: ~/.cache/peft-bench/venv/bin/python scripts/make_gguf_quant_fixture.py
Writes tests/fixtures/gguf/quantize_expected.safetensors: `input` (f32 [8, 64]), `q8_0`,
`q4_0`, `q5_0` and `q5_1` (u8, the encoded rows), and `{type}_dequantized` (f32, the
package's dequantization of those bytes). Rows: normal values at several scales, a zero row, a row of
ties (x.5 steps after scaling), a row with one outlier, a row whose largest magnitude is
negative, and tiny values (f16 subnormal scales).
"""

from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

rng = np.random.default_rng(19)
rows = [
    rng.standard_normal(64),
    rng.standard_normal(64) * 1e3,
    np.zeros(64),
    np.tile(np.arange(-8, 8) * 0.5, 4),
    np.concatenate([rng.standard_normal(63) * 0.01, [40.0]]),
    np.concatenate([[-7.0], rng.uniform(-1, 1, 63)]),
    rng.standard_normal(64) * 1e-6,
    np.tile([127.0, -127.0, 63.5, -63.5, 0.5, -0.5, 1.5, -1.5], 8),
]
x = np.stack(rows).astype(np.float32)
out = {"input": x}
for name in ["q8_0", "q4_0", "q5_0", "q5_1"]:
    ty = gguf.GGMLQuantizationType[name.upper()]
    out[name] = np.ascontiguousarray(gguf.quants.quantize(x, ty)).astype(np.uint8)
    # the package's dequantization of those bytes, for our reader's Q5_0/Q5_1 decoding
    out[f"{name}_dequantized"] = gguf.quants.dequantize(out[name], ty).astype(np.float32)
path = Path(__file__).resolve().parent.parent / "tests/fixtures/gguf/quantize_expected.safetensors"
save_file(out, str(path))
print(f"wrote {path}: " + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in out.items()))
