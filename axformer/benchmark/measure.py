"""What one benchmark row is, and its peak memory, measured in a fresh process per candidate.

Peak memory is the maximum resident set while running the largest batch, in a
process of its own, so one candidate's allocations cannot hide another's. The
timing itself (interleaved rounds, batch-1 percentiles, batch-32 throughput)
is :mod:`axformer.runtime.timing`, shared with the export and the search.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from dataclasses import dataclass

import torch


@dataclass
class Candidate:
    name: str  # row label in the table
    path: str  # model directory or exported artifact
    padded: bool = False  # pad every input to max_length (out-of-the-box baseline)
    baseline: bool = False
    threads: int | None = None


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
    import queue

    try:
        for _ in range(600):  # a child that died (import error, out of memory) gives up at once, not in 10 min
            try:
                _, after = q.get(timeout=1.0)
                break
            except queue.Empty:
                if not p.is_alive():
                    return None
        else:
            return None
    finally:
        p.join(timeout=30)
    return after / 1024.0  # ru_maxrss is in KiB on Linux
