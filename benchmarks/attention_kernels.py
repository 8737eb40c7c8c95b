"""The approximate-attention kernels alone against dense attention, at MiniLM's shape (12 heads x 32 dims).

Usage:  python benchmarks/attention_kernels.py [--device cuda] [--batches 1 32] [--lengths 128 256 512 2048]

Prints the median time per call of dense attention (PyTorch's scaled_dot_product_attention, a fused
kernel), top-K hard attention (reference: dense and masked; gather: K keys only) and sign-matching
attention (gather), measured in interleaved rounds on random inputs. The results quoted in
benchmarks/results/attention.md name the device they were taken on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from axformer.attention import kernels  # noqa: E402
from axformer.runtime.timing import interleaved_medians  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 512, 2048])
    ap.add_argument("-k", type=int, default=30)
    args = ap.parse_args()
    dev = args.device
    print(
        "torch",
        torch.__version__,
        torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads",
    )
    for b in args.batches:
        for n in args.lengths:
            q, k, v = (torch.randn(b, 12, n, 32, device=dev) for _ in range(3))
            mask = torch.zeros(b, 1, 1, n, device=dev)
            fns = {
                "dense SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask),
                "top-K reference": lambda: kernels.topk_reference(q, k, v, mask, 32**-0.5, args.k, True),
                "top-K gather": lambda: kernels.topk_gather(q, k, v, mask, 32**-0.5, args.k, True),
                "sign gather": lambda: kernels.sign_match_gather(q, k, v, mask, 32**-0.5, args.k),
            }
            m = interleaved_medians(fns, repeats=20 if dev.startswith("cuda") else 3, rounds=3)
            print(f"batch {b} n {n}: " + ", ".join(f"{name} {1e3 * t:.3f} ms" for name, t in m.items()), flush=True)


if __name__ == "__main__":
    main()
