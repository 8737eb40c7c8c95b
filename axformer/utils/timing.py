"""Latency measurement that survives a noisy shared machine.

Variants are timed in interleaved rounds (A B C A B C ...) after a warm-up, so
that a slow spell hits all of them alike; each figure is the median over all
repeats, and results are reported as ratios against a baseline measured in the
same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync() -> None:
    """CUDA kernels run asynchronously: a timer must wait for them, or it measures only the launches."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 3, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``rounds`` interleaved rounds of ``repeats`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                _sync()
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}
