"""Where the time of one request goes: the lean batch-1 path's phases against Predictor's batch path.

Apart from :mod:`axformer.runtime.lean` because it needs both paths, and ``Predictor`` itself serves a single
request through the lean path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from axformer.runtime.lean import LeanSession, Request, SessionChoice
from axformer.runtime.predictor import Predictor


def request_breakdown(
    path: str | os.PathLike, requests: Sequence[Request], choice: SessionChoice | None = None, rounds: int = 3
) -> dict[str, float]:
    """Where the time of one request goes, in milliseconds (medians over ``requests`` and ``rounds``): the lean
    path's tokenization, input preparation, session run and post-processing, its total, and the same request
    through Predictor's batch path (tokenize, collate, run, scatter: what ``Predictor.predict`` does for several
    texts), whose excess over the session run is Python overhead.

    Each round times the lean path over every request, then the batch path over every request: alternated
    request by request, one session's spinning worker threads still spin while the other runs, and on 2 cores
    that doubled the measured session run (MRPC int8, ``benchmarks/lean_runtime.py`` at 1f980d8: 12.9 ms
    against 5.9 ms for the same session timed alone)."""
    lean = LeanSession(path, choice)
    classify = bool(lean.labels)
    phases: dict[str, list[float]] = {k: [] for k in ("tokenize", "prepare", "run", "post", "lean", "predictor")}
    with Predictor(path, threads=lean.choice.threads) as batch_path:
        for r in list(requests)[:2]:  # warm-up
            lean(r), batch_path.predict_encoded(batch_path.tokenize([r]), 1)
        for _ in range(rounds):
            for r in requests:
                t0 = time.perf_counter()
                enc = lean.tokenize(r)
                t1 = time.perf_counter()
                feed = lean.feed(enc)
                t2 = time.perf_counter()
                logits = lean.run(feed)
                t3 = time.perf_counter()
                if classify:
                    lean.label(logits)
                t4 = time.perf_counter()
                for k, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    phases[k].append(seconds * 1e3)
            for r in requests:
                t0 = time.perf_counter()
                batch_path.predict_encoded(batch_path.tokenize([r]), 1)  # the batch path, not its lean shortcut
                phases["predictor"].append((time.perf_counter() - t0) * 1e3)
    out = {k: float(np.median(v)) for k, v in phases.items()}
    out["predictor_overhead"] = out["predictor"] - out["run"]
    return out
