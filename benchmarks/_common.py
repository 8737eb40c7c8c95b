"""What the benchmark scripts share: running an axformer command as printed, and finding a search's output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from axformer.benchmark.result import batch1_speedups
from axformer.distill.recipe import trial_cells


def run_axformer(cmd: list[str]) -> str:
    """Run ``axformer ...`` (the command line the tables print) with this interpreter; returns the code it ran
    with (``commit()`` as it starts: a long benchmark's later commits are not what an earlier run imported)."""
    code = commit()
    print("$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "axformer", *cmd[1:]], check=True)
    return code


def searched_dir(out: Path) -> Path:
    """The search's output of an ``axformer optimize`` run: the pipeline's ``3-search`` stage, or the top of a run
    made before the pipeline existed (same model, log and report)."""
    staged = Path(out) / "3-search"
    return staged if (staged / "report.json").exists() or not (Path(out) / "report.json").exists() else Path(out)


def environment_line() -> str:
    """Hardware and versions, for the line under a table's title."""
    import onnxruntime
    import torch
    import transformers

    from axformer.utils.device import cpu_description

    return (
        f"{platform.machine()}, {cpu_description()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def commit() -> str:
    """The code a row was measured with (rows accumulate over sessions; a row of older code says so)."""

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "axformer") else "")


def run_suffix(extra: str) -> str:
    """A directory-name suffix for a run with extra options ('--decision-data runs/d/x.tsv' -> 'decision-data-x')."""
    import re
    import shlex

    parts = [Path(a).stem if "/" in a else a.lstrip("-") for a in shlex.split(extra)]
    return re.sub(r"[^A-Za-z0-9.=]+", "-", "-".join(parts)).strip("-")


def preset_outcome(out: Path) -> dict:
    """What an ``axformer optimize`` run in ``out`` promised and delivered: the main metric of the original and the
    result on the deciding examples, the confirmation examples and the dev set (the deployed artifact's, from the
    benchmark), the certificate, the recovery, the artifact's precision and its batch-1 speed-ups over the original
    (PyTorch, dynamic length) and over ONNX Runtime int8 of the unpruned model, measured in one benchmark run."""
    import json

    from axformer.benchmark.result import BenchmarkResult
    from axformer.benchmark.run import DYNAMIC, ORT_INT8
    from axformer.search.result import SearchReport

    out = Path(out)
    report = json.loads((out / "3-search" / "report.json").read_text())
    bench = BenchmarkResult.from_dict(json.loads((out / "5-benchmark" / "benchmark.json").read_text()))
    if report.get("strategy") == "fastformers":
        return _recipe_outcome(out, report["recipe"], bench)
    search = SearchReport.from_dict(report)
    main = search.task.main_metric
    original, artifact = bench.row(DYNAMIC), bench.rows[-1]
    int8 = bench.row(ORT_INT8)
    o, p = search.original, search.optimized
    c = search.certification
    export = json.loads((out / "4-export" / "export.json").read_text())
    rec = search.recovery
    return {
        "metric": main,
        "decision": [o.heldout.metrics[main], p.heldout.metrics[main]],
        "confirmation": [o.confirmation.metrics[main], p.confirmation.metrics[main]] if o.confirmation else None,
        "dev": [original.dev.metrics[main], artifact.dev.metrics[main]],
        "certificate": None if c is None else {"passed": c.shipped.passed, "undone": c.shipped_undone},
        "removed": len(search.removed),
        "recovery": None
        if not rec
        else {
            "mode": rec["mode"],
            "budget": rec.get("budget"),
            "original_budget": rec.get("original_budget"),
            # shipped unrecovered: every recovery failed its certificate (a retry that passed ships recovered)
            "reverted": bool(c and c.recovery is not None and not c.shipped_recovered),
            "retried": bool(c and c.retry is not None and c.retry.passed),
            # no better than the searched model on the deciding examples: its weights were not kept
            "not_kept": rec.get("kept") is False,
        },
        "precision": export["precision"],
        "fallback": bool(export.get("fallback")),
        **batch1_speedups(original, artifact, int8),
    }


def _recipe_outcome(out: Path, recipe: dict, bench) -> dict:
    """``preset_outcome`` of a run whose strategy was FastFormers' recipe: no search report, so the decision
    figures are the recipe's summaries on the whole held-out split (its checkpoint selection and importance saw
    only the deciding part), the confirmation figures the export's check against the original, and the
    removed count the teacher's layers the student lost."""
    import json

    from axformer.benchmark.run import DYNAMIC, ORT_INT8

    main = bench.task.main_metric
    original, artifact, int8 = bench.row(DYNAMIC), bench.rows[-1], bench.row(ORT_INT8)
    stages = recipe["stages"]
    export = json.loads((out / "4-export" / "export.json").read_text())
    check = export["validation"]
    plan = recipe.get("plan") or {}
    back = export.get("backtracked") or {}
    # the stage that shipped: the final one, an earlier one the pipeline fell back to, or the teacher
    shipped = next((s for s in stages if s.get("path") == back.get("shipped")), stages[0]) if back else stages[-1]
    present = [s for s in shipped["structure"] if not s.get("removed")]
    tried = [t for t in recipe.get("trials", []) if t["tried"]]  # smaller students judged before the recipe's own
    steps = [s["stage"].rsplit("/", 1)[-1] for s in stages[1:]]  # a rung's stages live under its own directory
    return {
        "metric": main,
        "decision": [stages[0]["heldout"]["metrics"][main], shipped["heldout"]["metrics"][main]],
        "confirmation": [check["pytorch"]["metrics"][main], check["onnx"]["metrics"][main]],
        "dev": [original.dev.metrics[main], artifact.dev.metrics[main]],
        "certificate": {
            "passed": check["drop"] <= check["max_drop"],
            "undone": [Path(t["model"]).name for t in back.get("tried", [])],
        },
        "removed": len(stages[0]["structure"]) - len(present),
        "recovery": {
            "mode": "recipe: "
            + "".join(f"{t['sizes']} tried first, {trial_cells(t)[-1]}; " for t in tried)
            + ", ".join(RECIPE_STEPS[step] for step in steps if step in RECIPE_STEPS)
            + (f" (shipped {shipped['stage']})" if back and shipped is not stages[0] else ""),
            # the plan counts the distillations' inputs, extra ones included; a run without --time-budget has none
            "budget": {"examples": plan.get("train_examples"), "epochs": plan.get("epochs")} if plan else None,
            "original_budget": None,
            "reverted": bool(back) and shipped is stages[0],
            "retried": False,
        },
        "precision": export["precision"],
        "fallback": bool(export.get("fallback")),
        **batch1_speedups(original, artifact, int8),
    }


# the recipe's stage directories (axformer.distill.recipe) as steps in a table cell
RECIPE_STEPS = {"1-distilled": "distil", "2-pruned": "prune", "3-distilled-again": "distil"}


# unlabelled inputs a distillation adds to the training examples, as the recovery's budget records them
EXTRA_INPUTS = (("windows", "windows"), ("augmented_texts", "perturbed"), ("calibration_texts", "calibration"))


def recovery_text(r: dict) -> str:
    """A preset outcome's recovery in a table cell: mode, its data budget next to the original's, and whether it
    shipped unrecovered (reverted), recovered at its second attempt (retry shipped), or was not kept because it
    scored no higher than the searched model on the deciding examples."""
    rec = r.get("recovery")
    if not rec:
        return "-"
    b, o = rec.get("budget"), rec.get("original_budget")
    text = rec["mode"]
    if b:
        added = [(b[k], what) for k, what in EXTRA_INPUTS if b.get(k)]
        text += f" {b['examples']}" + "".join(f" + {n} {what}" for n, what in added) + f" x {b['epochs']:g}"
    if o:
        text += f" (original {o['examples']} x {o['epochs']:g})"
    if rec.get("not_kept"):
        return text + ", not kept (no gain on the deciding examples)"
    return text + (", reverted" if rec.get("reverted") else ", retry shipped" if rec.get("retried") else "")
