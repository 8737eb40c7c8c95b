"""Do the presets keep their promise on the dev set? (issue: promises that hold on data the search never saw)

Usage:  python benchmarks/promises_glue.py [--tasks rte mrpc sst2 stsb cola] [--presets fastest-within-1 most-accurate]
                                           [--data-dir ../shared/data/glue] [--extra "--fidelity-texts 800"]

For each task it takes the fine-tuned baseline (runs/baselines/T, from benchmarks/finetune_baselines.py) and runs
``axformer optimize runs/baselines/T --preset P`` end to end (search with its certificate, export, benchmark
against the baselines in one run), timed. Per task and preset the table shows the main metric of the original
and of the result on the deciding examples, on the confirmation examples (no decision used them) and on the
dev set (the deployed artifact's, from the benchmark), the certificate and what it undid, the artifact's batch-1
speed-up over the original (PyTorch, dynamic length) and over ONNX Runtime int8 of the unpruned model, both
measured in the benchmark's one run, and the wall time. Rows accumulate in benchmarks/results/promises_glue.json,
so tasks can be run one at a time; the table is benchmarks/results/promises_glue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from _common import environment_line, preset_outcome, recovery_text, run_axformer, run_suffix

from axformer.utils.device import cpu_description

STORE = Path("benchmarks/results/promises_glue.json")
TABLE = Path("benchmarks/results/promises_glue.md")


def _row(task: str, preset: str, out: Path, cmd: list[str], seconds: float, code: str) -> dict:
    return {
        "commit": code,
        "cpu": cpu_description(),
        "task": task,
        "preset": preset,
        **preset_outcome(out),
        "seconds": seconds,
        "command": " ".join(shlex.quote(x) for x in cmd),
    }


def _table(rows: list[dict]) -> str:
    env = environment_line()
    lines = [
        "# Presets on unseen data: decision split, confirmation split, dev set",
        "",
        f"Produced by `python benchmarks/promises_glue.py` ({env}). MiniLM (all-MiniLM-L6-v2) fine-tuned by "
        "`benchmarks/finetune_baselines.py`. Metric: the task's main metric in points. Dev: the deployed "
        "artifact of `axformer optimize --preset P` against the original in PyTorch. Speed-ups: batch-1 p50 "
        "latency on dev texts, all rows of a task in one benchmark run, with each runtime's default threads (from "
        "session 30 on also with one thread per row, in parentheses: the steadier ratio on this shared 2-vCPU "
        "machine; from session 32 on also with each model at its faster thread count, one or the default, chosen "
        "on half of those requests and timed on the other half, as a deployer who sets threads per model runs "
        "them). Each row names its CPU (rows before the "
        "cpu column ran on the Intel Xeon), from session 20 on with the instruction sets its int8 and bf16 "
        "kernels use (the plain AMD EPYC rows of sessions 14-19 ran on one with AVX2 and without VNNI): int8 "
        "kernels round, and gain over fp32, differently on different CPUs.",
        "",
        "| task | preset | decision split | confirmation split | dev (artifact) | certificate | removed | "
        "recovery (examples x epochs) | artifact | vs original | vs ORT int8 of the original | wall time | code "
        "| cpu |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def one_thread(r):
        one, faster = r.get("speedup_vs_ort_int8_one_thread"), r.get("speedup_vs_ort_int8_faster_threads")
        parts = ([] if one is None else [f"1 thread: {one:.2f}x"]) + (
            [] if faster is None else [f"each at its faster: {faster:.2f}x"]
        )
        return f" ({'; '.join(parts)})" if parts else ""

    def pair(v):
        return "-" if v is None else f"{v[0]:.2f} -> {v[1]:.2f} ({v[1] - v[0]:+.2f})"

    for r in sorted(rows, key=lambda r: (r["task"], r["preset"])):
        cert = r["certificate"]
        cert_text = "-" if cert is None else ("passed" if cert["passed"] else "failed")
        if cert and cert["undone"]:
            cert_text += f", {len(cert['undone'])} undone"
        artifact = r["precision"] + (" (fallback)" if r["fallback"] else "")
        lines.append(
            f"| {r['task']} ({r['metric']}) | {r['preset']} | {pair(r['decision'])} | {pair(r['confirmation'])} | "
            f"{pair(r['dev'])} | {cert_text} | {r['removed']} | {recovery_text(r)} | {artifact}"
            f" | {r['speedup_vs_original']:.2f}x | {r['speedup_vs_ort_int8']:.2f}x{one_thread(r)}"
            f" | {r['seconds'] / 60:.1f} min"
            f" | {r.get('commit', 'before 3b3901c')} | {r.get('cpu', 'Intel(R) Xeon(R) Processor')} |"
        )
    lines += ["", "Commands:", ""] + [
        f"- `{r['command']}`" for r in sorted(rows, key=lambda r: (r["task"], r["preset"]))
    ]
    lines += ["", *_accuracy_averages(rows)]
    return "\n".join(lines) + "\n"


def _accuracy_averages(rows: list[dict]) -> list[str]:
    """most-accurate's average dev change per acceptance rule, over the latest row of each task (rows are in
    the order they were measured)."""
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["preset"] == "most-accurate":
            rule = "axformer (faithful)" if "--rule axformer" in r["command"] else "default (paired)"
            latest[(rule, r["task"])] = r
    out = []
    for rule in sorted({rule for rule, _ in latest}):
        dev = {t: r["dev"][1] - r["dev"][0] for (k, t), r in latest.items() if k == rule}
        each = ", ".join(f"{t} {d:+.2f}" for t, d in sorted(dev.items()))
        out.append(
            f"most-accurate, rule {rule}: average dev change over {len(dev)} task(s) "
            f"{sum(dev.values()) / len(dev):+.2f} points ({each}; latest row of each task)."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc", "rte", "cola", "stsb"])
    ap.add_argument("--presets", nargs="*", default=["fastest-within-1", "most-accurate"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/promises")
    ap.add_argument("--extra", default="", help="more options for every optimize run, e.g. '--fidelity-texts 800'")
    args = ap.parse_args()
    rows = {
        (r["task"], r["preset"], r["command"]): r for r in (json.loads(STORE.read_text()) if STORE.exists() else [])
    }
    for task in args.tasks:
        base = Path("runs/baselines") / task
        if not (base / "metrics.json").exists():
            sys.exit(f"{task}: run benchmarks/finetune_baselines.py --tasks {task} first")
        for preset in args.presets:
            suffix = run_suffix(args.extra)
            out = Path(args.out) / (f"{task}-{preset}" + (f"-{suffix}" if suffix else ""))
            cmd = ["axformer", "optimize", str(base), "--preset", preset, "--data-dir", args.data_dir, "-o", str(out)]
            cmd += shlex.split(args.extra)
            t0 = time.perf_counter()
            code = run_axformer(cmd)  # resumes a finished or interrupted run instead of redoing it
            seconds = sum(json.loads((out / "times.json").read_text()).values()) or time.perf_counter() - t0
            row = _row(task, preset, out, cmd, seconds, code)
            rows[(task, preset, row["command"])] = row
            STORE.write_text(json.dumps(list(rows.values()), indent=1))
            TABLE.write_text(_table(list(rows.values())))
            print(TABLE.read_text(), flush=True)


if __name__ == "__main__":
    main()
