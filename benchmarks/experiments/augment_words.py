"""Which replacement words make perturbed copies teach a small student more? (issues: promises that hold, four
times faster)

Usage:  python benchmarks/experiments/augment_words.py TASK LAYERS COPIES WORDS [--hard 1] [--epochs 3]
            [--lr 3e-4] [--data-dir ../shared/data/glue] [--out runs/augment_words]
        WORDS: unigram (a draw from the training texts' word frequencies, axformer's default)
        or neighbours (one of the 8 nearest whole-word tokens in the teacher's own input-embedding table, as
        TinyBERT replaces words by GloVe neighbours); TASK's baseline in runs/baselines/TASK
        (benchmarks/finetune_baselines.py).

Distils the teacher's layers LAYERS (e.g. 0,2,5) with ``axformer.distill.distill`` on the teacher's training part
plus COPIES perturbed copies of each training text (15% of the words touched: replaced, deleted or swapped; no
copy equals a dev or held-out text), with the gold-label loss on the labelled rows at weight --hard, and prints
the student's held-out (the teacher's held-out split: chose the checkpoint, never trained on) and dev figures
beside the teacher's. Dev reports; it decides nothing here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from axformer.distill import DistillConfig, distill
from axformer.tasks.sources import load_task
from axformer.utils.io import read_json

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task")
    ap.add_argument("layers")
    ap.add_argument("copies", type=int)
    ap.add_argument("words", choices=("unigram", "neighbours"))
    ap.add_argument("--hard", type=float, default=1.0)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "augment_words"))
    args = ap.parse_args()
    teacher = ROOT / "runs" / "baselines" / args.task
    data = load_task(args.task, args.data_dir, source="local")
    config = DistillConfig(
        epochs=args.epochs, learning_rate=args.lr, hard_weight=args.hard, augment=args.copies, augment_words=args.words
    )
    out = Path(args.out) / f"{args.task}-{args.layers.replace(',', '')}-{args.copies}-{args.words}-h{args.hard:g}"
    t0 = time.perf_counter()
    distill(teacher, out, student_layers=args.layers, data=data, config=config)
    taught, student = (read_json(Path(m) / "metrics.json")["splits"] for m in (teacher, out))
    row = {
        "task": args.task,
        "layers": args.layers,
        "copies": read_json(out / "axformer.json")["history"][-1]["augmented_texts"],
        "words": args.words,
        "hard": args.hard,
        "epochs": args.epochs,
        "lr": args.lr,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        **{
            f"{split}": f"{taught[split]['metrics'][taught[split]['main_metric']]:.2f} -> "
            f"{student[split]['metrics'][student[split]['main_metric']]:.2f}"
            for split in ("heldout", "dev")
        },
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
