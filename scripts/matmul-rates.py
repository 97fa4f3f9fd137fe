"""LibTorch's f32 and bf16 matrix-product rates at the shapes of one SmolLM2-135M training step
(2048 tokens; the projections, the output head): which dtype pays for the frozen base on this
CPU. BENCHMARKS.md ("Why bf16 products do not pay on this CPU") quotes it.

Usage: python scripts/matmul-rates.py   (any Python with torch, e.g. the venv that
scripts/setup-venv.sh or scripts/setup-libtorch.sh makes)
"""

import time

import torch

TOKENS = 2048
# (in, out) of q/o, k/v, gate/up, down and the tied output head of SmolLM2-135M.
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]


def rate(product, flop, repeats=5):
    """GFLOP/s of `product()`, after one warm-up call."""
    product()
    started = time.perf_counter()
    for _ in range(repeats):
        product()
    return flop * repeats / (time.perf_counter() - started) / 1e9


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'in x out':>12} {'f32 x·Wᵀ':>10} {'bf16 x·Wᵀ':>10} {'f32 dy·W':>10} {'bf16 dy·W':>10}  GFLOP/s")
    for width, out in SHAPES:
        x, dy = torch.randn(TOKENS, width), torch.randn(TOKENS, out)
        weight = torch.randn(out, width)
        weight16, x16, dy16 = weight.bfloat16(), x.bfloat16(), dy.bfloat16()
        flop = 2 * TOKENS * width * out
        rates = [
            rate(lambda: x @ weight.t(), flop),
            rate(lambda: x16 @ weight16.t(), flop),
            rate(lambda: dy @ weight, flop),
            rate(lambda: dy16 @ weight16, flop),
        ]
        print(f"{width:>5} x {out:<5}" + "".join(f"{r:>11.0f}" for r in rates))


if __name__ == "__main__":
    main()
