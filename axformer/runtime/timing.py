"""Timing models on real or synthetic inputs, in a way that survives a noisy shared machine.

Variants are timed in interleaved rounds (A B C, B C A, C A B, ...) after a
warm-up, so that a slow spell hits all of them alike and no variant is always
timed first; figures are medians (or percentiles over every
request of every round), and results are reported as ratios against a baseline
measured in the same run. Between two variants the timer pauses (``SETTLE_S``)
so that the worker threads of the one just timed go idle: a deployed model runs
alone in its process, and on 2 cores the spinning thread pool of the previous
session (ONNX Runtime's, PyTorch's OpenMP) otherwise slows the next one's first
requests. CUDA work is synchronised before each clock read. Used by the export
(which artifact is fastest here), the search's cost calibration and report,
and the benchmark.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from axformer.data.batching import Encoded, collate, sorted_batches

# Seconds to pause before each variant's turn. Measured on the demo's int8 artifact and ONNX Runtime int8 of the
# original (2-core AMD EPYC, 40 requests per turn; benchmarks/experiments/timing_neighbours.py, docs/promises.md
# "Timing on a shared machine"): right after an ONNX Runtime fp32 session's turn their batch-1 p95 was 10.83 and
# 8.07 ms (p50 5.01 and 3.91); after a 0.2 s pause 7.91 and 5.01 (p50 7.04 and 4.35): the tails went.
SETTLE_S = 0.2


def rotated(names: list[str], round_index: int) -> list[str]:
    """The order of one round: each round starts one variant later, so that every variant takes every position
    (the first turn of a round follows the previous round's batch-32 passes)."""
    k = round_index % len(names) if names else 0
    return names[k:] + names[:k]


def settle(seconds: float = SETTLE_S) -> None:
    """Let the previous variant's worker threads stop spinning before the next variant is timed."""
    sync()
    if seconds > 0:
        time.sleep(seconds)


def sync() -> None:
    """CUDA kernels run asynchronously: a timer must wait for them, or it measures only the launches."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    rounds: int = 3,
    warmup: int = 2,
    settle_s: float = SETTLE_S,
) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``rounds`` interleaved rounds of ``repeats`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in rotated(list(fns), r):
            fn = fns[name]
            settle(settle_s)
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync()
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


@dataclass
class Timing:
    latency_ms: list[float] = field(default_factory=list)  # per request, all rounds
    throughput: list[float] = field(default_factory=list)  # examples/s per round

    def summary(self) -> dict[str, float | None]:
        lat = np.asarray(self.latency_ms)
        return {
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "throughput_per_s": float(statistics.median(self.throughput)) if self.throughput else None,
        }


def pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a dynamically padded batch to a fixed length (the out-of-the-box baseline)."""
    width = batch["input_ids"].shape[1]
    if width >= length:
        return batch
    extra = length - width
    out = {}
    for k, v in batch.items():
        if v.dim() < 2:  # not a per-token input (group_size)
            out[k] = v
            continue
        fill = pad_id if k == "input_ids" else 0
        out[k] = torch.cat([v, torch.full((v.shape[0], extra), fill, dtype=v.dtype)], dim=1)
    return out


def synthetic(length: int, n: int, vocab: int, pad_id: int, seed: int = 0) -> Encoded:
    """``n`` inputs of exactly ``length`` tokens (fixed-length timing; the token values do not affect speed)."""
    rng = np.random.default_rng(seed)
    low = 1000 if vocab > 2000 else min(5, vocab - 1)  # past the special tokens of a full vocabulary
    ids = [rng.integers(low, vocab, size=length).astype(np.int64) for _ in range(n)]
    return Encoded(ids, [np.zeros(length, np.int64) for _ in range(n)], np.zeros(n, np.int64), pad_id)


def prepare(
    enc: Encoded, batch_size: int, padded_to: int | None, pad_id: int, n: int | None = None
) -> list[dict[str, torch.Tensor]]:
    idx = np.arange(len(enc)) if n is None else np.arange(min(n, len(enc)))
    sub = enc.subset(idx)
    batches = [
        collate(sub, b, "cpu", with_labels=False)
        for b in (
            sorted_batches(sub.lengths, batch_size) if batch_size > 1 else [np.array([i]) for i in range(len(sub))]
        )
    ]
    return [pad_to(b, padded_to, pad_id) for b in batches] if padded_to else batches


@torch.inference_mode()
def time_candidates(
    models: dict[str, object],
    single: dict[str, list[dict]],
    big: dict[str, list[dict]],
    rounds: int = 5,
    warmup: int = 1,
    settle_s: float = SETTLE_S,
) -> dict[str, Timing]:
    """Interleaved rounds: batch-1 requests one by one (latency), then the batch-32 pass (throughput)."""
    out = {k: Timing() for k in models}
    for r in range(warmup + rounds):
        for name in rotated(list(models), r):
            model = models[name]
            settle(settle_s)
            lat = []
            for b in single[name]:
                t0 = time.perf_counter()
                model(**b)
                sync()
                lat.append(1e3 * (time.perf_counter() - t0))
            n = sum(len(b["input_ids"]) for b in big[name])
            t0 = time.perf_counter()
            for b in big[name]:
                model(**b)
            sync()
            dt = time.perf_counter() - t0
            if r >= warmup:
                out[name].latency_ms += lat
                out[name].throughput.append(n / dt if dt > 0 else float("inf"))
    return out


@torch.inference_mode()
def measure_latency(models: dict, enc, n_single: int, device, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 latency over dev texts (each padded to its own length) and batch-32 per-example time, interleaved.

    Every model of ``models`` is timed in the same rounds, so their ratios hold even when the machine is shared;
    absolute figures do not (two processes on two cores make each call several times slower, unevenly)."""
    single = [collate(enc, np.array([i]), device, with_labels=False) for i in range(min(n_single, len(enc)))]
    big = [collate(enc, idx, device, with_labels=False) for idx in sorted_batches(enc.lengths, 32)[:4]]
    n_big = sum(len(b["input_ids"]) for b in big)

    def loop(m, batches):
        def fn():
            for b in batches:
                m(**b)

        return fn

    b1 = interleaved_medians({k: loop(m, single) for k, m in models.items()}, repeats=1, rounds=rounds, warmup=1)
    b32 = interleaved_medians({k: loop(m, big) for k, m in models.items()}, repeats=1, rounds=rounds, warmup=1)
    return {
        k: {"batch1_ms": 1e3 * b1[k] / max(len(single), 1), "batch32_ms_per_example": 1e3 * b32[k] / max(n_big, 1)}
        for k in models
    }
