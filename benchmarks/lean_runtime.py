"""Where the time of one request goes, and what the lean batch-1 path wins (issue: four times faster, item 3).

Usage:  python benchmarks/lean_runtime.py MODEL [MODEL ...] [--requests 200] [--rounds 5] [--data-dir DIR]

MODEL is a fine-tuned model directory (exported here to ONNX Runtime int8 with ``axformer export``, the
unpruned baseline a user gets in two commands) or an exported artifact. For each, on dev texts of its recorded
task: every candidate session option timed at batch 1 (interleaved rounds, medians), the fastest chosen, and one
request end to end on the lean path (tokenize, prepare inputs, session run, post-process) next to the same
request through Predictor's batch path (what ``Predictor.predict([text])`` did before it took the lean path for
one request, session 25). Results: benchmarks/results/lean_runtime.{md,json} (one section per
model, accumulated across runs).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from _common import commit, environment_line, run_axformer

from axformer.models.record import task_for
from axformer.runtime.backends import is_onnx_artifact
from axformer.runtime.breakdown import request_breakdown
from axformer.runtime.lean import as_request, choose_session

STORE = Path("benchmarks/results/lean_runtime.json")
TABLE = Path("benchmarks/results/lean_runtime.md")
PHASES = ("tokenize", "prepare", "run", "post", "lean", "predictor", "predictor_overhead")


def _measure(model: Path, out: Path, requests: int, rounds: int, data_dir: str | None, seed: int = 0) -> dict:
    art = model
    command = None
    if not is_onnx_artifact(model):
        art = out / f"{model.name}-int8"
        command = ["axformer", "export", str(model), "-o", str(art), "--precision", "int8", "--max-drop", "100"]
        if not is_onnx_artifact(art):
            run_axformer(command)
    data = task_for(str(art), data_dir=data_dir)
    dev = next(iter(data.dev.values()))
    pick = np.random.default_rng(seed).permutation(len(dev))[:requests]
    texts = [as_request(dev.texts[i]) for i in pick]
    choice, table = choose_session(art, texts[: max(1, requests // 2)], rounds=rounds)
    return {
        "model": str(model),
        "artifact": str(art),
        "task": data.spec.name,
        "requests": len(texts),
        "rounds": rounds,
        "choice": asdict(choice),
        "choices": table,
        "breakdown": request_breakdown(art, texts, choice, rounds=rounds),
        "command": " ".join(command) if command else None,
        "commit": commit(),
        "environment": environment_line(),
    }


def _section(r: dict) -> list[str]:
    b = r["breakdown"]
    lines = [
        f"## {r['task']}: {r['artifact']}",
        "",
        f"{r['environment']}; code {r['commit']}; {r['requests']} dev requests, {r['rounds']} interleaved rounds."
        + (f" Artifact: `{r['command']}`." if r["command"] else ""),
        "",
        "Session options at batch 1 (model only, ms per request, median):",
        "",
        "| threads | spinning | graph level | execution | ms per request |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(r["choices"], key=lambda c: c["ms_per_request"]):
        chosen = " (chosen)" if {k: v for k, v in c.items() if k != "ms_per_request"} == r["choice"] else ""
        lines.append(
            f"| {c['threads']} | {'on' if c['spinning'] else 'off'} | {c['graph_level']} | {c['execution']} "
            f"| {c['ms_per_request']:.3f}{chosen} |"
        )
    lines += [
        "",
        "One request end to end (ms, medians):",
        "",
        "| tokenize | prepare inputs | session run | post-process | lean total | batch path total "
        "| batch path overhead over the run | lean speed-up |",
        "|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(f"{b[k]:.3f}" for k in PHASES) + f" | {b['predictor'] / b['lean']:.2f}x |",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="runs/lean")
    ap.add_argument("--data-dir", default=None, help="where the recorded task's data lies (GLUE: ../shared/data/glue)")
    args = ap.parse_args()
    rows = {r["artifact"]: r for r in (json.loads(STORE.read_text()) if STORE.exists() else [])}
    for m in args.models:
        r = _measure(Path(m), Path(args.out), args.requests, args.rounds, args.data_dir)
        rows[r["artifact"]] = r
    STORE.write_text(json.dumps(list(rows.values()), indent=1))
    lines = [
        "# The lean batch-1 path: session options chosen by timing, and one request end to end",
        "",
        "Produced by `python benchmarks/lean_runtime.py MODEL ...`. The lean path (`axformer.runtime.lean`) calls "
        "the fast tokenizer's backend once and feeds its ids to ONNX Runtime as they are (Predictor takes it for "
        "one request); Predictor's batch path serves several. Every figure is a median over the requests and "
        "rounds of one run.",
        "",
    ]
    for r in rows.values():
        lines += _section(r)
    TABLE.write_text("\n".join(lines))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
