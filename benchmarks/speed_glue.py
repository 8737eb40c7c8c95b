"""Four times faster than ONNX Runtime int8 of the unpruned model? The preset's whole job, row by row.

Usage:  python benchmarks/speed_glue.py [--tasks sst2 mrpc stsb rte cola] [--data-dir ../shared/data/glue]
                                        [--out runs/speed] [--extra "--student-layers 3 --heads 8 --ffn 768"]

For each task it takes the fine-tuned baseline (runs/baselines/T, from benchmarks/finetune_baselines.py) and runs,
timed, the whole job

    axformer optimize runs/baselines/T --preset fastest-within-1 <extra> -o OUT/T-fastest-within-1[-extra]

with the preset's defaults unless ``--extra`` says otherwise: from session 31 its ``--strategy auto`` runs the
FastFormers recipe sized by the training set (distil into fewer of the teacher's layers over the *whole*
training part, or keep them, prune heads and FFN neurons by gradient importance, distil again, int8), planned
within 55 minutes; then export and a benchmark against the baselines in one run. The output directory is named as
``benchmarks/promises_glue.py`` names it, so ``--out`` pointed at that script's runs reads the same jobs (it
resumes a finished job instead of running it again). Per task the table shows every row of the job's own
benchmark (PyTorch padded and dynamic, ONNX Runtime fp32 and int8 of the unpruned model, the recipe's student
before pruning where it has one, the searched or distilled PyTorch model, the deployed artifact): the dev main
metric, batch-1 p50/p95 on dev texts, batch-32 throughput, cost per 100M requests; then the artifact's speed-up
over ONNX Runtime int8 (default threads, one thread per row, each at its faster thread count) and the job's wall
time by stage. Rows accumulate in
benchmarks/results/speed_glue.json (keyed by task and command; rows of sessions before 32 ran the recipe with the
options their command shows), so tasks can be run one at a time; the table is benchmarks/results/speed_glue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from _common import environment_line, run_axformer, run_suffix

from axformer.benchmark.result import batch1_speedups, ratios_text
from axformer.utils.device import cpu_description

STORE = Path("benchmarks/results/speed_glue.json")
TABLE = Path("benchmarks/results/speed_glue.md")


def _row(task: str, out: Path, cmd: list[str], seconds: float, code: str) -> dict:
    from axformer.benchmark.result import BenchmarkResult
    from axformer.benchmark.run import ORT_INT8

    bench = BenchmarkResult.from_dict(json.loads((out / "5-benchmark" / "benchmark.json").read_text()))
    main = bench.task.main_metric
    recipe = json.loads((out / "3-search" / "recipe.json").read_text())
    export = json.loads((out / "4-export" / "export.json").read_text())
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}
    artifact, int8 = bench.rows[-1], bench.row(ORT_INT8)
    return {
        "commit": code,
        "cpu": cpu_description(),
        "task": task,
        "metric": main,
        "rows": [
            {
                "name": "artifact" if r is artifact else r.name,
                "dev": r.dev.metrics.get(main),
                "p50": r.timing.latency_p50_ms,
                "p95": r.timing.latency_p95_ms,
                "batch32": r.timing.throughput_per_s,
                "usd": r.usd_per_100m,
                "mib": None if r.size_bytes is None else r.size_bytes / 2**20,
            }
            for r in bench.rows
        ],
        **batch1_speedups(bench.rows[1], artifact, int8),
        # FastFormers' cumulative view of the job's own benchmark (its chain; session 32 on, every step also against
        # ONNX Runtime int8 of the unpruned model)
        "cumulative": [
            {
                "step": c.step,
                "dev": c.metric,
                "p50": c.latency_ms,
                "total": c.total_latency_speedup,
                "vs_ort_int8": c.latency_vs_ort_int8,
                "batch32_total": c.total_throughput_gain,
            }
            for c in bench.cumulative
        ],
        "dev_change": artifact.dev.metrics[main] - bench.rows[1].dev.metrics[main],
        "precision": export["precision"],
        # the export's check against the original: on the confirmation examples (no decision of the recipe used
        # them) or, for a run without a certificate, on the held-out examples that selected its checkpoints
        "check": {
            "on": export["validation"]["checked_on"],
            "examples": export["validation"]["onnx"]["num_examples"],
            "original": export["validation"]["pytorch"]["metrics"][main],
            "artifact": export["validation"]["onnx"]["metrics"][main],
        },
        "fallback": bool(export.get("fallback")),
        # the recipe's model failed its certificate and the original's artifact shipped (its drop, where checked)
        "backtracked": export.get("backtracked"),
        # each recipe stage's held-out and dev metric (PyTorch or ONNX, as the stage made it) and wall time
        "recipe_stages": [
            {
                "stage": s["stage"],
                "heldout": s["heldout"]["metrics"][main],
                "dev": next((v["metrics"][main] for k, v in s.items() if k == bench.task.dev_split), None),
                "seconds": s["seconds"],
            }
            for s in recipe["stages"]
        ],
        "planned_seconds": {s["stage"]: s["seconds"] for s in (recipe.get("plan") or {}).get("stages", [])},
        # the smaller students the recipe tried before its own, with both checks and the verdict
        "trials": recipe.get("trials", []),
        "epochs": (recipe.get("plan") or {}).get("epochs"),
        "stage_seconds": times,
        # this invocation's wall time; a resumed job's stages are in stage_seconds
        "seconds": seconds,
        "command": " ".join(shlex.quote(x) for x in cmd),
    }


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _table(rows: list[dict]) -> str:
    lines = [
        "# Four times faster than ONNX Runtime int8 of the unpruned model? fastest-within-1's whole job, row by row",
        "",
        f"Produced by `python benchmarks/speed_glue.py` ({environment_line()}). MiniLM (all-MiniLM-L6-v2) fine-tuned "
        "by `benchmarks/finetune_baselines.py`. Every row of a task comes from the job's own benchmark stage: one "
        "run, medians of interleaved rounds; batch-1 p50/p95 on dev texts (dynamic length except the padded "
        "baseline), batch-32 throughput on dev texts, cost per 100M requests at the benchmark's price per hour. "
        "Dev: the task's main metric in points on the whole dev set, as deployed.",
        "",
    ]
    for r in rows:
        lines += [
            f"## {r['task']} ({r['metric']}), code {r['commit']}, {r['cpu']}",
            "",
            f"`{r['command']}`",
            "",
            "| row | dev | batch-1 p50 ms | p95 ms | batch-32 ex/s | USD / 100M | size MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in r["rows"]:
            lines.append(
                f"| {x['name']} | {_fmt(x['dev'])} | {_fmt(x['p50'])} | {_fmt(x['p95'])} | {_fmt(x['batch32'], '.0f')} "
                f"| {_fmt(x['usd'])} | {_fmt(x['mib'], '.1f')} |"
            )
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in r["stage_seconds"].items())
        stages += f"; the whole job {sum(r['stage_seconds'].values()) / 60:.1f}" if r["stage_seconds"] else ""
        recipe = "; ".join(
            f"{s['stage']}: held-out {_fmt(s['heldout'])}, dev {_fmt(s['dev'])}, "
            f"{_fmt(None if s['seconds'] is None else s['seconds'] / 60, '.1f')} min"
            + (f" (planned {r['planned_seconds'][s['stage']] / 60:.1f})" if s["stage"] in r["planned_seconds"] else "")
            for s in r["recipe_stages"]
        )
        epochs = "" if r["epochs"] is None else f" The budget gave each distillation {r['epochs']:.2f} epochs."
        # rows of an older version of this script lack these
        original = f" ({r['speedup_vs_original']:.2f}x the original in PyTorch)" if "speedup_vs_original" in r else ""
        threads = ratios_text(r, skip_default=True)
        original += f"; {threads}" if threads else ""
        c = r.get("check")
        check = (
            ""
            if c is None
            else f" Export check on {c['examples']} {c['on']} examples: {c['original']:.2f} -> {c['artifact']:.2f} "
            f"({c['artifact'] - c['original']:+.2f})."
        )
        if r.get("backtracked"):
            b = r["backtracked"]
            check = (
                f" The recipe's model lost {b['drop']:.2f} points on the {b['checked_on']} examples: it failed its "
                f"certificate and the artifact is the original's.{check}"
            )
        check += "".join(f" {_trial_text(t)}" for t in r.get("trials", []))
        steps = r.get("cumulative") or []
        if any(c["vs_ort_int8"] for c in steps):  # rows of session 32 on
            lines += [
                "",
                "Cumulative view (FastFormers' order; the multi-instance step is batch 32 only):",
                "",
                "| step | dev | batch-1 p50 ms | batch-1 vs padded PyTorch | batch-1 vs ORT int8 of the original "
                "| batch-32 vs padded PyTorch |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {c['step']} | {_fmt(c['dev'])} | {_fmt(c['p50'])} | {_times(c['total'])} | "
                f"{_times(c['vs_ort_int8'])} | {_times(c['batch32_total'])} |"
                for c in steps
            ]
        lines += [
            "",
            f"Artifact ({r['precision']}{', fallback' if r['fallback'] else ''}): dev {r['dev_change']:+.2f} points "
            f"against the original in PyTorch, **{r['speedup_vs_ort_int8']:.2f}x** ONNX Runtime int8 of the unpruned "
            f"model at batch 1{original}.{check} Wall time by "
            f"stage (minutes): {stages or '-'}.{epochs} Recipe stages: {recipe or '-'}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def _trial_text(t: dict) -> str:
    """One smaller student the recipe tried first, in a sentence (the recipe's own cells)."""
    from axformer.distill.recipe import trial_cells

    examples, teacher, student, certificate, verdict = trial_cells(t)
    if not t["tried"]:
        return f"Student tried first: {t['sizes']}: {verdict}."
    cert = "" if certificate == "-" else f", certificate {certificate} examples"
    return (
        f"Student tried first: {t['sizes']}: {teacher} -> {student} on {examples} deciding examples{cert}: {verdict}."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc", "stsb", "rte", "cola"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--extra", default="", help="more options of axformer optimize (a student, --time-budget)")
    ap.add_argument("--out", default="runs/speed")
    args = ap.parse_args()
    store = json.loads(STORE.read_text()) if STORE.exists() else []
    for task in args.tasks:
        base = Path("runs/baselines") / task
        if not (base / "config.json").exists():
            sys.exit(f"no fine-tuned baseline at {base}; run benchmarks/finetune_baselines.py --tasks {task} first")
        suffix = run_suffix(args.extra)
        out = Path(args.out) / (f"{task}-fastest-within-1" + (f"-{suffix}" if suffix else ""))
        cmd = ["axformer", "optimize", str(base), "--preset", "fastest-within-1", "--data-dir", args.data_dir]
        cmd += ["-o", str(out), *shlex.split(args.extra)]
        t0 = time.perf_counter()
        code = run_axformer(cmd)
        row = _row(task, out, cmd, time.perf_counter() - t0, code)
        store = [r for r in store if (r["task"], r["command"]) != (task, row["command"])] + [row]
        STORE.write_text(json.dumps(store, indent=1))
        TABLE.write_text(_table(sorted(store, key=lambda r: r["task"])))
        print(TABLE.read_text())


if __name__ == "__main__":
    main()
