"""Which answers does one classifier give differently from another, and were they fixed or broken?

Usage:  python benchmarks/answer_changes.py REFERENCE CANDIDATE [--splits dev train] [--data-dir DIR]

REFERENCE and CANDIDATE are model directories or exported artifacts of the same task (e.g. the original and the
deployed artifact of an optimize run, or the searched PyTorch model and its int8 artifact). Per split: how many
answers differ, how many the candidate turned right (fixed) and wrong (broken), and the exact one-sided sign
test of "breaks more than it fixes". Counts are ``axformer.search.certificate.AnswerChanges``, as the
certificate reports them on the confirmation examples. Prints a markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import binomtest

from axformer.models.record import task_for
from axformer.runtime.predictor import Predictor
from axformer.search.certificate import AnswerChanges


def _answers(path: str, texts: list) -> np.ndarray:
    with Predictor(path) as p:
        return np.asarray(p.predict(texts)).argmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--splits", nargs="*", default=["dev"], help="dev and/or train (the whole training file)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    data = task_for(args.candidate, data_dir=args.data_dir)
    splits = {"dev": next(iter(data.dev.values())), "train": data.train}
    print(f"reference {args.reference}, candidate {args.candidate}\n")
    print("| split | examples | changed | fixed | broken | P(breaks more, sign test) |\n|---|---|---|---|---|---|")
    for name in args.splits:
        split = splits[name]
        texts = list(split.texts)
        a = AnswerChanges.of(np.asarray(split.labels), _answers(args.reference, texts), _answers(args.candidate, texts))
        p = binomtest(a.fixed, a.fixed + a.broken, 0.5, alternative="less").pvalue if a.fixed + a.broken else 1.0
        share = 100 * a.changed / len(texts)
        print(f"| {name} | {len(texts)} | {a.changed} ({share:.2f}%) | {a.fixed} | {a.broken} | {p:.3f} |")


if __name__ == "__main__":
    main()
