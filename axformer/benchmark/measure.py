"""Measurements of one benchmark run: every candidate timed side by side on the same inputs.

Latency is per request at batch 1 (p50/p95 over every request of every round),
throughput is examples per second at batch 32 (median over rounds), both in
interleaved rounds after a warm-up so a slow spell on a shared machine hits
all candidates alike. "padded" candidates pad every input to the maximum
length (what a pipeline does out of the box); the others pad each batch to its
longest member. Peak memory is measured in a fresh process per candidate
(its maximum resident set while running the largest batch), so one
candidate's allocations cannot hide another's.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from axformer.data.batching import Encoded, collate, sorted_batches


@dataclass
class Candidate:
    name: str  # row label in the table
    path: str  # model directory or exported artifact
    padded: bool = False  # pad every input to max_length (out-of-the-box baseline)
    baseline: bool = False
    threads: int | None = None


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
        fill = pad_id if k == "input_ids" else 0
        out[k] = torch.cat([v, torch.full((v.shape[0], extra), fill, dtype=v.dtype)], dim=1)
    return out


def synthetic(length: int, n: int, vocab: int, pad_id: int, seed: int = 0) -> Encoded:
    """``n`` inputs of exactly ``length`` tokens (fixed-length timing; the token values do not affect speed)."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1000 if vocab > 2000 else 5, vocab, size=length).astype(np.int64) for _ in range(n)]
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
) -> dict[str, Timing]:
    """Interleaved rounds: batch-1 requests one by one (latency), then the batch-32 pass (throughput)."""
    out = {k: Timing() for k in models}
    for r in range(warmup + rounds):
        for name, model in models.items():
            lat = []
            for b in single[name]:
                t0 = time.perf_counter()
                model(**b)
                lat.append(1e3 * (time.perf_counter() - t0))
            n = sum(len(b["input_ids"]) for b in big[name])
            t0 = time.perf_counter()
            for b in big[name]:
                model(**b)
            dt = time.perf_counter() - t0
            if r >= warmup:
                out[name].latency_ms += lat
                out[name].throughput.append(n / dt if dt > 0 else float("inf"))
    return out


def _high_water_kib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across exec, so a child
    started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_child(path: str, batch: dict, device: str, queue) -> None:
    from axformer.runtime.backends import load_runnable

    before = _high_water_kib()
    model = load_runnable(path, device=device)
    with torch.inference_mode():
        model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    queue.put((before, _high_water_kib()))


def peak_memory_mib(path: str, batch: dict[str, torch.Tensor], device: str = "cpu") -> float | None:
    """Peak resident memory (MiB) of a fresh process that loads the model and runs ``batch``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(path, {k: v.numpy() for k, v in batch.items()}, device, q))
    p.start()
    try:
        _, after = q.get(timeout=600)
    except Exception:
        return None
    finally:
        p.join(timeout=30)
    return after / 1024.0  # ru_maxrss is in KiB on Linux
