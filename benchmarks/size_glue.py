"""Ten times smaller within 1 point? ``smallest-within-1`` on five GLUE tasks (issue: ten times smaller).

Usage:  python benchmarks/size_glue.py [--tasks sst2 mrpc stsb rte cola] [--data-dir ../shared/data/glue]
                                       [--extra "--target-size none"]
        python benchmarks/size_glue.py --tasks      (the table again from its stored rows and notes)

For each task it takes the fine-tuned baseline (runs/baselines/T, from benchmarks/finetune_baselines.py) and runs
``axformer optimize runs/baselines/T --preset smallest-within-1`` end to end (search by artifact bytes, its
certificate, export with int4 matrices and tables, a pruned vocabulary and trimmed positions, and the benchmark
against the baselines in one run), timed. Per task the table shows, for the original (fp32 PyTorch), ONNX
Runtime int8 of the unpruned model (the benchmark's own baseline export) and the artifact: bytes of the model
file and of what serving needs (model, config, tokenizer), the ratio to the original's model file, the dev main
metric, batch-1 p50 latency on dev texts (one benchmark run), and for the artifact the share of dev tokens (the
original tokenizer's) outside the kept vocabulary and the share that became unknown. Also: int8 of the unpruned
model with int8 embeddings (what sentence-transformers ships as its int8 ONNX file), sizes only. Rows accumulate
in benchmarks/results/size_glue.json; the table is benchmarks/results/size_glue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import yaml
from _common import environment_line, run_axformer, run_suffix

from axformer.benchmark.result import BenchmarkResult
from axformer.benchmark.run import DYNAMIC, ORT_FP32, ORT_INT8
from axformer.export.size import breakdown_of
from axformer.utils.device import cpu_description

STORE = Path("benchmarks/results/size_glue.json")
TABLE = Path("benchmarks/results/size_glue.md")
NOTES = Path("benchmarks/results/size_glue_notes.md")  # what a row needs said beside it (kept across runs)


def _dev_coverage(original_dir: Path, artifact_dir: Path, dev_texts) -> dict:
    from axformer.models.loading import load_tokenizer
    from axformer.surgery.vocabulary import VOCABULARY_FILE, coverage, kept_ids_of

    original, pruned = load_tokenizer(original_dir), load_tokenizer(artifact_dir)
    if not (artifact_dir / VOCABULARY_FILE).exists():  # the vocabulary was kept whole
        return {"outside_percent": 0.0, "unknown_after_percent": 0.0, "kept": len(original)}
    cov = coverage(original, pruned, kept_ids_of(original, artifact_dir), dev_texts).to_dict()
    return {**cov, "kept": len(pruned), "original": len(original)}


def _int8_with_embeddings(base: Path, out: Path, data_dir: str) -> dict:
    """ONNX Runtime int8 of the unpruned model, embedding tables included: sizes and dev metric (not timed)."""
    target = out / "int8-embeddings"
    if not (target / "export.json").exists():
        run_axformer(
            ["axformer", "export", str(base), "-o", str(target), "--precision", "int8", "--embeddings", "int8",
             "--data-dir", data_dir, "--max-examples", "500", "--max-drop", "100", "--overwrite"]
        )  # fmt: skip
    from axformer.evaluation import evaluate

    dev = evaluate(str(target), None, data_dir, splits=("dev",), device="cpu").splits["dev"]
    return {**breakdown_of(target), "dev": dev.metrics[dev.main_metric]}


def _vocabulary_cost(base: Path, out: Path, data_dir: str, fraction: float, vocabulary: dict) -> dict:
    """What the pruned vocabulary alone costs on dev: fp32 artifacts with it (the run's vocabulary settings, kept
    set built from the same texts) and without it (the benchmark's ONNX Runtime fp32 baseline)."""
    from axformer.evaluation import evaluate
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.surgery.vocabulary import VocabularyConfig

    target = out / "fp32-vocabulary"
    if not (target / "export.json").exists():
        config = ExportConfig(precision="fp32", vocabulary=VocabularyConfig(**vocabulary),
                              confirm_fraction=fraction, max_examples=500, max_drop=100)  # fmt: skip
        export_model(base, target, config, None, data_dir, overwrite=True)
    dev = evaluate(str(target), None, data_dir, splits=("dev",), device="cpu").splits["dev"]
    return {"dev": dev.metrics[dev.main_metric]}


def _row(task: str, base: Path, out: Path, cmd: list[str], seconds: float, data_dir: str, code: str) -> dict:
    from axformer.models.record import ModelRecord
    from axformer.tasks.sources import load_task_from_record

    bench = BenchmarkResult.from_dict(json.loads((out / "5-benchmark" / "benchmark.json").read_text()))
    export = json.loads((out / "4-export" / "export.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    main = bench.task.main_metric
    original, int8, artifact = bench.row(DYNAMIC), bench.row(ORT_INT8), bench.rows[-1]
    fp32 = bench.row(ORT_FP32)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    vocabulary = _vocabulary_cost(
        base, out, data_dir, resolved["search"]["certificate"]["fraction"], resolved["export"]["vocabulary"]
    )
    sizes = {
        "original": breakdown_of(base),
        "ort_int8": breakdown_of(out / "5-benchmark" / "baselines" / "onnx-int8"),
        "artifact": breakdown_of(out / "4-export"),
    }
    data = load_task_from_record(ModelRecord.load(base).task, data_dir)
    dev_texts = next(iter(data.dev.values())).texts
    return {
        "commit": code,
        "cpu": cpu_description(),
        "task": task,
        "metric": main,
        "dev": {"original": original.dev.metrics[main], "ort_int8": int8.dev.metrics[main],
                "artifact": artifact.dev.metrics[main]},
        "latency_ms": {"original": original.timing.latency_p50_ms, "ort_int8": int8.timing.latency_p50_ms,
                       "artifact": artifact.timing.latency_p50_ms},
        "file_bytes": {k: v["file_bytes"] for k, v in sizes.items()},
        "serving_bytes": {k: v["directory_bytes"] for k, v in sizes.items()},
        "artifact_parts": sizes["artifact"]["parts"],
        "int8_embeddings": _int8_with_embeddings(base, out, data_dir),
        "dev_tokens": _dev_coverage(base, out / "4-export", dev_texts),
        "vocabulary_dev": {"fp32": fp32.dev.metrics[main], "fp32_pruned_vocabulary": vocabulary["dev"]},
        "precision": export["precision"],
        "fallback": export.get("fallback"),
        "removed": len(json.loads((out / "3-search" / "report.json").read_text()).get("removed", [])),
        "predicted_bytes": summary.get("artifact_bytes_predicted"),
        "confirmation_drop": export["validation"]["drop"],
        "seconds": seconds,
        "command": " ".join(shlex.quote(x) for x in cmd),
    }  # fmt: skip


def _mib(b) -> str:
    return f"{b / 2**20:.2f}"


def _table(rows: list[dict]) -> str:
    lines = [
        "# Ten times smaller within 1 point: smallest-within-1 on GLUE",
        "",
        f"Produced by `python benchmarks/size_glue.py` ({environment_line()}; each row's CPU in its last column: "
        "int8 kernels round differently on different CPUs). MiniLM (all-MiniLM-L6-v2) "
        "fine-tuned by `benchmarks/finetune_baselines.py`. Sizes in MiB (2^20 bytes) read from the written "
        "files: the model file, and in brackets what serving needs (model, config, tokenizer). Ratio: the "
        "original's model file over this one. Dev: the task's main metric in points, of each row as deployed; "
        "latency: batch-1 p50 on dev texts, the three rows of a task in one benchmark run (same texts, each "
        "through its own tokenizer). Dev tokens: the original tokenizer's tokens of the dev texts outside the "
        "kept vocabulary (re-spelled from kept pieces) and those that became unknown. Vocabulary alone: the dev "
        "metric of the fp32 ONNX model without and with the pruned vocabulary (and trimmed positions).",
        "",
        "| task | original fp32 | ORT int8 (unpruned) | smallest-within-1 | ratio "
        "| dev: original / ORT int8 / artifact | batch-1 p50: original / ORT int8 / artifact "
        "| dev tokens outside / unknown | vocabulary alone (fp32 dev) | artifact | wall time | code | cpu |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["task"]):
        f, s, d, lat, tok = r["file_bytes"], r["serving_bytes"], r["dev"], r["latency_ms"], r["dev_tokens"]
        voc = r["vocabulary_dev"]
        ratio = f["original"] / f["artifact"]
        art = (
            r["precision"]
            + (" (fallback)" if r["fallback"] else "")
            + (f", {r['removed']} removed" if r["removed"] else "")
        )
        lines.append(
            f"| {r['task']} ({r['metric']}) | {_mib(f['original'])} ({_mib(s['original'])}) "
            f"| {_mib(f['ort_int8'])} ({_mib(s['ort_int8'])}) | {_mib(f['artifact'])} ({_mib(s['artifact'])}) "
            f"| {ratio:.2f}x | {d['original']:.2f} / {d['ort_int8']:.2f} / {d['artifact']:.2f} "
            f"({d['artifact'] - d['original']:+.2f}) | {lat['original']:.2f} / {lat['ort_int8']:.2f} / "
            f"{lat['artifact']:.2f} ms | {tok['outside_percent']:.2f}% / {tok['unknown_after_percent']:.2f}% "
            f"| {voc['fp32']:.2f} -> {voc['fp32_pruned_vocabulary']:.2f} | {art} | {r['seconds'] / 60:.1f} min "
            f"| {r['commit']} | {r['cpu']} |"
        )
    lines += [
        "",
        "For comparison, ONNX Runtime int8 of the unpruned model with int8 embedding tables too (what "
        "sentence-transformers ships as its int8 ONNX file; `axformer export --precision int8 --embeddings int8`):",
        "",
        "| task | model file (serving) MiB | ratio | dev |",
        "|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["task"]):
        e = r["int8_embeddings"]
        lines.append(
            f"| {r['task']} | {_mib(e['file_bytes'])} ({_mib(e['directory_bytes'])}) "
            f"| {r['file_bytes']['original'] / e['file_bytes']:.1f}x | {e['dev']:.2f} |"
        )
    lines += ["", "Where the artifact's bytes go (MiB by part and format):", ""]
    for r in sorted(rows, key=lambda r: r["task"]):
        parts = "; ".join(
            f"{p} " + ", ".join(f"{k} {_mib(b)}" for k, b in v.items()) for p, v in r["artifact_parts"].items() if v
        )
        lines.append(f"- {r['task']}: {parts}")
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in sorted(rows, key=lambda r: r["task"])]
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["sst2", "mrpc", "stsb", "rte", "cola"])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/size")
    ap.add_argument("--extra", default="", help="more options for every optimize run, e.g. '--target-size none'")
    args = ap.parse_args()
    rows = {(r["task"], r["command"]): r for r in (json.loads(STORE.read_text()) if STORE.exists() else [])}
    for task in args.tasks:
        base = Path("runs/baselines") / task
        if not (base / "metrics.json").exists():
            sys.exit(f"{task}: run benchmarks/finetune_baselines.py --tasks {task} first")
        suffix = run_suffix(args.extra)
        out = Path(args.out) / (task + (f"-{suffix}" if suffix else ""))
        cmd = ["axformer", "optimize", str(base), "--preset", "smallest-within-1", "--data-dir", args.data_dir,
               "-o", str(out), *shlex.split(args.extra)]  # fmt: skip
        t0 = time.perf_counter()
        code = run_axformer(cmd)  # resumes a finished or interrupted run instead of redoing it
        seconds = sum(json.loads((out / "times.json").read_text()).values()) or time.perf_counter() - t0
        row = _row(task, base, out, cmd, seconds, args.data_dir, code)
        rows[(task, row["command"])] = row
        STORE.write_text(json.dumps(list(rows.values()), indent=1))
        TABLE.write_text(_table(list(rows.values())))
        print(TABLE.read_text(), flush=True)
    if rows and not args.tasks:  # `--tasks` alone: the table again from the stored rows and the notes
        TABLE.write_text(_table(list(rows.values())))


if __name__ == "__main__":
    main()
