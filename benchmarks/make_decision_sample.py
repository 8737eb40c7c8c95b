"""A representative decision sample for ``--decision-data``, carved from a model's own held-out split.

Usage:  python benchmarks/make_decision_sample.py --model runs/baselines/sst2 --min-words 15
            [--data-dir ../shared/data/glue] [--out runs/decision/sst2-sentences.tsv]

SST-2's training data is mostly phrases (median 10 tokens) while its dev set and real traffic are whole
sentences (median 24): decisions taken on phrases say little about sentences. This writes the held-out
examples of at least ``--min-words`` words (the model was not fine-tuned on them; no dev text is read) as a
file in the task's own layout, for ``axformer optimize ... --decision-data FILE``. A user with a sample of
real traffic gives that instead; this stands in for one where the benchmark has none. It also prints how many
of them hold a training phrase of 5 and of 10 or more words (the sentence's own phrases, which SST-2's split by
phrase leaves in the training part).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from axformer.models.record import ModelRecord, task_for
from axformer.tasks.splits import apply_split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/baselines/sst2")
    ap.add_argument("--min-words", type=int, default=15)
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA_DIR", "../shared/data/glue"))
    ap.add_argument("--out", default="runs/decision/sst2-sentences.tsv")
    args = ap.parse_args()
    data = task_for(args.model, None, args.data_dir)
    layout = data.spec.local
    if layout is None or len(layout.text_columns) != 1 or not layout.header:
        raise SystemExit(f"{data.spec.name}: this script writes single-text tasks with a header row (e.g. SST-2)")
    train_part, heldout = apply_split(data, ModelRecord.load(args.model).split)
    names = {v: k for k, v in (layout.label_values or {}).items()}
    rows = [
        (t[0], names.get(int(y), str(y)))
        for t, y in zip(heldout.texts, heldout.labels, strict=True)
        if len(t[0].split()) >= args.min_words
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow([layout.text_columns[0], layout.label_column])
        w.writerows(rows)
    print(f"{len(rows)} of {len(heldout)} held-out examples have at least {args.min_words} words: {out}")
    # how unseen they are: SST-2 splits phrases, not sentences, so a held-out sentence's own phrases may be
    # training examples the model (and any student distilled on the training part) was fit to
    trained = {t[0].strip() for t in train_part.texts}
    for span in (5, 10):
        seen = sum(_holds_a_training_phrase(text, trained, span) for text, _ in rows)
        print(f"{seen} of {len(rows)} ({100 * seen / max(len(rows), 1):.1f}%) hold a training phrase of {span}+ words")


def _holds_a_training_phrase(text: str, trained: set[str], span: int) -> bool:
    words = text.split()
    return any(
        " ".join(words[i:j]) in trained
        for i in range(len(words))
        for j in range(i + span, len(words) + 1)
        if (i, j) != (0, len(words))
    )


if __name__ == "__main__":
    main()
