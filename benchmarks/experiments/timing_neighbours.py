"""Does timing several models in one process measure what each does alone? (issue: promises that hold)

Usage:  python benchmarks/experiments/timing_neighbours.py --baseline DIR --artifact DIR --neighbour DIR
            [--task bbcnews] [--requests 40] [--rounds 4] [--processes 3] [--threads N]
        e.g. the demo's: --baseline runs/demoNN/5-benchmark/baselines/onnx-int8 --artifact runs/demoNN/4-export
             --neighbour runs/demoNN/5-benchmark/baselines/onnx-fp32

The benchmark times every model in one process, in interleaved rounds. A deployed model runs alone in its
process. On 2 cores the worker threads of the session timed just before (ONNX Runtime's pool spins after a
run; PyTorch's OpenMP threads too) can slow the next model's first requests. This measures batch-1 latency of
the baseline and the artifact on the task's dev texts three ways: each alone in a fresh process (several
processes, the reference), and in one process right after the neighbour's turn with no pause and with the
benchmark's pause (``axformer.runtime.timing.SETTLE_S``). Prints a markdown table (p50 and p95 in ms, and the
baseline / artifact ratio of the p50s). ``--threads``: every session with that many intra-op threads (default:
ONNX Runtime's, one per core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import environment_line  # noqa: E402

from axformer.runtime.backends import load_runnable  # noqa: E402
from axformer.runtime.timing import SETTLE_S, prepare, settle  # noqa: E402


def requests(path: str, task: str, n: int, data_dir: str | None) -> list[dict]:
    from axformer.data.batching import encode
    from axformer.models.loading import load_tokenizer
    from axformer.runtime.backends import max_input_length
    from axformer.tasks.sources import load_task
    from axformer.tasks.spec import get_task

    dev = next(iter(load_task(get_task(task), data_dir).dev.values()))
    idx = np.random.default_rng(0).permutation(len(dev))[:n]
    enc = encode(load_tokenizer(path), dev.subset(idx), max_input_length(path))
    return prepare(enc, 1, None, enc.pad_token_id)


def turn(model, batches: list[dict]) -> list[float]:
    out = []
    for b in batches:
        t0 = time.perf_counter()
        model(**b)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def alone(path: str, args) -> list[float]:
    """Child process: one model, nothing else loaded, ``rounds`` turns after a warm-up turn."""
    batches = requests(path, args.task, args.requests, args.data_dir)
    model = load_runnable(path, threads=args.threads)
    turn(model, batches)
    return [t for _ in range(args.rounds) for t in turn(model, batches)]


def after_neighbour(args, pause: float) -> dict[str, list[float]]:
    batches = {p: requests(p, args.task, args.requests, args.data_dir) for p in (args.baseline, args.artifact)}
    nb = requests(args.neighbour, args.task, args.requests, args.data_dir)
    models = {p: load_runnable(p, threads=args.threads) for p in (args.baseline, args.artifact, args.neighbour)}
    out: dict[str, list[float]] = {args.baseline: [], args.artifact: []}
    for r in range(args.rounds + 1):
        for p in (args.baseline, args.artifact):
            turn(models[args.neighbour], nb)
            settle(pause)
            lat = turn(models[p], batches[p])
            if r:
                out[p] += lat
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--neighbour", required=True)
    ap.add_argument("--task", default="bbcnews")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(alone(args.child, args)))
        return
    rows: list[tuple[str, dict[str, list[float]]]] = []
    for i in range(args.processes):
        lat = {}
        for p in (args.baseline, args.artifact):
            child = [sys.executable, __file__, *sys.argv[1:], "--child", p]
            lat[p] = json.loads(
                subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
        rows.append((f"alone, one process each (#{i + 1})", lat))
    rows.append(("one process, right after the neighbour, no pause", after_neighbour(args, 0.0)))
    rows.append((f"one process, after the neighbour and a {SETTLE_S:g} s pause", after_neighbour(args, SETTLE_S)))
    threads = f"{args.threads} intra-op thread(s)" if args.threads else "ONNX Runtime's default threads"
    print(
        f"Batch-1 latency on {args.requests} {args.task} dev requests x {args.rounds} rounds, {threads} "
        f"({environment_line()})"
    )
    print("| how | baseline p50 / p95 ms | artifact p50 / p95 ms | baseline / artifact (p50) |")
    print("|---|---|---|---|")
    for how, lat in rows:
        b, a = np.asarray(lat[args.baseline]), np.asarray(lat[args.artifact])
        pb, pa = np.percentile(b, [50, 95]), np.percentile(a, [50, 95])
        print(f"| {how} | {pb[0]:.2f} / {pb[1]:.2f} | {pa[0]:.2f} / {pa[1]:.2f} | {pb[0] / pa[0]:.2f}x |")


if __name__ == "__main__":
    main()
