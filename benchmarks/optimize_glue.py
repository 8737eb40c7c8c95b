"""Both search goals on MiniLM for SST-2, MRPC, RTE, CoLA and STS-B (issue: the search).

Usage:  python benchmarks/optimize_glue.py [--tasks sst2 mrpc ...] [--data-dir ../shared/data/glue]

For each task: the fine-tuned baseline from benchmarks/finetune_baselines.py
(trained first if missing), then, as subprocesses whose command lines are
printed in the table,

    axformer optimize runs/baselines/T --goal accuracy            --until-stage search --scorer none -o
    runs/optimize/T-accuracy
    axformer optimize runs/baselines/T --goal speed --max-drop 1  --until-stage search --scorer none -o
    runs/optimize/T-speed

(the search stage of the pipeline alone; its report is OUT/3-search/report.json; runs made before the
pipeline existed kept it at OUT/report.json, and both are read).

Each report measures the original and the optimized model in the same run
(latency ratios). The searches run for hours, often beside other jobs, and two
processes on two cores make every call several times slower, unevenly; so
``--remeasure`` times every model of a task again, interleaved in one run, and
is meant to run alone on the machine: the table takes its ratios from there
(runs/optimize/latency.json) and marks any it had to copy from a search's own
report. Finished runs are not repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from _common import run_axformer, searched_dir

GOALS = {  # label in the table: (run directory suffix, flags)
    "accuracy": ("accuracy", ["--goal", "accuracy"]),
    "speed --max-drop 1": ("speed", ["--goal", "speed", "--max-drop", "1"]),
    "speed --max-drop 1 --recover continue": (
        "speed-recovered",
        ["--goal", "speed", "--max-drop", "1", "--recover", "continue", "--recover-max-train-examples", "16000"],
    ),
}
ALL_TASKS = ["sst2", "mrpc", "rte", "cola", "stsb"]


def others(entry: dict, main: str) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in entry["metrics"].items() if k != main) or "-"


def remeasure(models_by_task: dict[str, dict[str, Path]], args) -> dict:
    """Batch-1 and batch-32 latency of the baseline and every finished run of each task, all interleaved in one run."""
    from axformer.data.batching import encode
    from axformer.evaluation.context import load_context
    from axformer.models.loading import load_model
    from axformer.runtime.timing import measure_latency

    result = {
        "command": "python benchmarks/optimize_glue.py --remeasure",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "tasks": {},
    }
    for task, paths in models_by_task.items():
        ctx = load_context(f"{args.baselines}/{task}", None, args.data_dir, 16, 0, "cpu", False)
        enc = encode(ctx.tokenizer, next(iter(ctx.data.dev.values())), ctx.record.max_seq_length)
        models = {"baseline": ctx.model.eval(), **{goal: load_model(path).eval() for goal, path in paths.items()}}
        result["tasks"][task] = measure_latency(models, enc, 200, "cpu", rounds=args.rounds)
        print(task, {k: round(v["batch1_ms"], 2) for k, v in result["tasks"][task].items()}, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc", "rte", "cola", "stsb"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--baselines", default="runs/baselines")
    ap.add_argument("--out", default="runs/optimize")
    ap.add_argument(
        "--goals", nargs="*", default=list(GOALS), help="labels of GOALS to run (the table shows every finished run)"
    )
    ap.add_argument("--table", default="benchmarks/results/optimize_glue.md")
    ap.add_argument(
        "--remeasure",
        action="store_true",
        help="time every finished model again, per task in one interleaved run (alone on the machine)",
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of --remeasure")
    args = ap.parse_args()
    missing = [t for t in args.tasks if not (Path(args.baselines) / t / "metrics.json").exists()]
    if missing:
        subprocess.run(
            [
                sys.executable,
                "benchmarks/finetune_baselines.py",
                "--data-dir",
                args.data_dir,
                "--out",
                args.baselines,
                "--tasks",
                *missing,
            ],
            check=True,
        )
    rows = []
    for task in ALL_TASKS:  # the table shows every finished run; only --tasks are run
        for goal, (suffix, flags) in GOALS.items():
            out = Path(args.out) / f"{task}-{suffix}"
            cmd = [
                "axformer",
                "optimize",
                f"{args.baselines}/{task}",
                *flags,
                "--until-stage",
                "search",
                "--scorer",
                "none",
                "--data-dir",
                args.data_dir,
                "-o",
                str(out),
            ]
            if task in args.tasks and goal in args.goals and not (searched_dir(out) / "report.json").exists():
                run_axformer(cmd)
            if (searched_dir(out) / "report.json").exists():
                rows.append((task, goal, json.loads((searched_dir(out) / "report.json").read_text()), " ".join(cmd)))
    latency_file = Path(args.out) / "latency.json"
    if args.remeasure:
        paths: dict[str, dict[str, Path]] = {}
        for task, goal, _, _ in rows:
            paths.setdefault(task, {})[goal] = searched_dir(Path(args.out) / f"{task}-{GOALS[goal][0]}")
        latency_file.write_text(json.dumps(remeasure(paths, args), indent=1))
    measured = json.loads(latency_file.read_text())["tasks"] if latency_file.exists() else {}

    def speedups(task: str, goal: str, r: dict) -> tuple[str, str]:
        m = measured.get(task, {})
        if goal in m and "baseline" in m:
            return tuple(f"{m['baseline'][k] / m[goal][k]:.2f}x" for k in ("batch1_ms", "batch32_ms_per_example"))
        return f"{r['speedup_batch1']:.2f}x*", f"{r['speedup_batch32']:.2f}x*"

    lines = [
        "# The search on GLUE: baseline, `--goal accuracy`, `--goal speed --max-drop 1`",
        "",
        f"Produced by `python benchmarks/optimize_glue.py` on {platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}. Model: "
        "all-MiniLM-L6-v2 fine-tuned per task "
        "(benchmarks/results/finetune_baselines.md). Decisions on up to 2,000 held-out training "
        "examples; dev = official GLUE dev, reporting only. "
        "Latency: PyTorch fp32, batch 1 over 200 dev texts each padded to its own length, and batch "
        "32 (per example), as ratios against the baseline; "
        "re-measured by `python benchmarks/optimize_glue.py --remeasure` with nothing else running, "
        "every model of a task interleaved in one run "
        f"({args.rounds} rounds; runs/optimize/latency.json). A ratio marked * is the search report's "
        "own, taken in the search's run, possibly beside other jobs.",
        "",
        "| task | model | held-out main | dev main | dev, other metrics | params | FLOPs/token @128 "
        "| batch-1 speed-up | batch-32 speed-up | trials (accepted) | search time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for task, goal, r, _cmd in rows:
        main = r["task"]["main_metric"]
        o, p = r["results"]["original"], r["results"]["optimized"]
        dev = next(
            k for k in o if k not in ("heldout", "parameters", "flops_per_token", "structure", "size_bytes", "latency")
        )
        if task not in seen:
            seen.add(task)
            lines.append(
                f"| {task} | baseline | {o['heldout']['metrics'][main]:.2f} | "
                f"{o[dev]['metrics'][main]:.2f} | {others(o[dev], main)} | "
                f"{o['parameters'] / 1e6:.2f} M | {o['flops_per_token'] / 1e6:.1f} M | 1.00x | 1.00x "
                "| | |"
            )
        lines.append(
            f"| {task} | `{goal}` | {p['heldout']['metrics'][main]:.2f} | "
            f"{p[dev]['metrics'][main]:.2f} | {others(p[dev], main)} | {p['parameters'] / 1e6:.2f} M "
            f"| {p['flops_per_token'] / 1e6:.1f} M | "
            f"{' | '.join(speedups(task, goal, r))} | {r['search']['trials']} "
            f"({r['search']['accepted']}) | {r['search']['seconds'] / 60:.1f} min |"
        )
    lines += ["", "Commands:", ""] + [f"- `{cmd}`" for *_, cmd in rows]
    lines += ["", "Removed components per run:", ""] + [
        f"- {task} {goal}: {', '.join(r['removed']) or 'nothing'}"
        + (f"; hard attention in {', '.join('L' + k for k in r['attention'])}" if r["attention"] else "")
        for task, goal, r, _ in rows
    ]
    Path(args.table).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
