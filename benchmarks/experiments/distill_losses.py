"""Which distillation loss and training precision make the most faithful student? (issues: promises that hold,
four times faster)

Usage:  python benchmarks/experiments/distill_losses.py [--teacher runs/baselines/sst2] [--task sst2]
            [--layers 0,2,3,5] [--epochs 1] [--decision-data runs/decision/sst2-sentences-grouped.tsv]
            [--variants soft-bf16,soft-fp32,hidden-bf16] [--out runs/distill_losses]
        (needs a fine-tuned baseline from benchmarks/finetune_baselines.py and ../shared/data/glue)

SST-2's FastFormers recipe keeps losing its point on dev before any pruning or rounding: its 4-layer student
(teacher layers 0, 2, 3, 5) lost 1.49 points of dev accuracy (session 20). This distils the same student from
the same teacher with ``axformer distill`` once per variant, everything else equal, and scores each against
the teacher on sentences no decision of the distillation saw: the dev set and the representative decision
sample (held-out training sentences; the teacher's held-out split, so the student never trained on them).
The share of changed answers is the figure that decides whether a point can be held (accuracy cannot fall by
more than it), and on ~3,000 sentences its standard error is about 0.4 points, half that of an accuracy
difference on dev alone. Variants: the recipe's soft cross-entropy with bf16 training steps (its default on
this CPU), the same in fp32, and soft cross-entropy plus the mean squared error of the mapped hidden states
(TinyBERT's intermediate-layer loss, ``--hidden-weight 1``), and one perturbed copy of every training text as
extra teacher-labelled input (``--augment 1``) against the plain student trained as many steps, and as many
perturbed copies made of the long training texts only (``--augment 4 --augment-min-words 15``). Writes
benchmarks/results/distill_losses_<task>.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import commit, environment_line, run_axformer  # noqa: E402

from axformer.evaluation.context import read_decision_data  # noqa: E402
from axformer.evaluation.paired import paired_bootstrap  # noqa: E402
from axformer.runtime import Predictor  # noqa: E402
from axformer.tasks.sources import load_task  # noqa: E402
from axformer.tasks.spec import get_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# name: (extra arguments, epochs as a multiple of --epochs)
VARIANTS = {
    "soft-bf16": (["--train-precision", "bf16"], 1),
    "soft-fp32": (["--train-precision", "fp32"], 1),
    "hidden-bf16": (["--train-precision", "bf16", "--hidden-weight", "1"], 1),
    "hidden-fp32": (["--train-precision", "fp32", "--hidden-weight", "1"], 1),
    # one perturbed copy of every training text (teacher-labelled): twice the steps per epoch, so its control is
    # the plain student trained for twice the epochs
    "augment-bf16": (["--train-precision", "bf16", "--augment", "1"], 1),
    # the same number of extra inputs spent on sentences only: 4 copies of each training text of 15+ words
    # (12.5k of SST-2's 57k; dev's median is 19 words, the training texts' 7)
    "augment-long-bf16": (["--train-precision", "bf16", "--augment", "4", "--augment-min-words", "15"], 1),
    "soft-bf16-twice": (["--train-precision", "bf16"], 2),
    # augment-bf16 with the replacement words taken from the teacher's embedding neighbours (session 26)
    "augment-neighbours-bf16": (["--train-precision", "bf16", "--augment", "1", "--augment-words", "neighbours"], 1),
}


def agreement(spec, labels: np.ndarray, teacher: np.ndarray, student: np.ndarray) -> dict:
    """The student against the teacher on one labelled set: accuracy difference with its interval, and the
    answers it changes (fixed: wrong before, right now; broken: the reverse)."""
    t, s = teacher.argmax(-1), student.argmax(-1)
    diff = paired_bootstrap((spec.main_metric,), labels, t, s)[spec.main_metric]
    changed = t != s
    return {
        "examples": int(len(labels)),
        "teacher": diff.original,
        "student": diff.candidate,
        "difference": diff.difference,
        "low": diff.low,
        "high": diff.high,
        "changed_pct": 100 * float(changed.mean()),
        "fixed": int((changed & (s == labels)).sum()),
        "broken": int((changed & (t == labels)).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="runs/baselines/sst2")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--layers", default="0,2,3,5")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--decision-data", default="runs/decision/sst2-sentences-grouped.tsv")
    ap.add_argument("--variants", default="soft-bf16,soft-fp32,hidden-bf16")
    ap.add_argument("--out", default="runs/distill_losses")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_task(get_task(args.task), args.data_dir)
    spec = data.spec
    sets = {"dev": next(iter(data.dev.values()))}
    if args.decision_data and Path(args.decision_data).is_file():
        sets["decision sample"] = read_decision_data(args.decision_data, data)
    teacher = Predictor(args.teacher)
    teacher_logits = {k: teacher.predict(s.texts, batch_size=64) for k, s in sets.items()}
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in names:
        if name in results:  # resumable: a variant measured before is kept
            continue
        student_dir = out / name
        cmd = [
            "axformer", "distill", "--teacher", args.teacher, "-o", str(student_dir), "--student-layers", args.layers,
            "--epochs", f"{args.epochs * VARIANTS[name][1]:g}", "--task", args.task, "--data-dir", args.data_dir,
            "--overwrite", *VARIANTS[name][0],
        ]  # fmt: skip
        record = student_dir / "axformer.json"
        finished = record.exists() and json.loads(record.read_text())["history"][-1]["stage"] == "distill"
        code = commit() if finished else run_axformer(cmd)  # a student trained before the scoring failed is kept
        student = Predictor(student_dir)
        results[name] = {
            "command": " ".join(cmd),
            "commit": code,
            "minutes": json.loads(record.read_text())["history"][-1]["wall_time_s"] / 60,
            **{k: agreement(spec, s.labels, teacher_logits[k], student.predict(s.texts, 64)) for k, s in sets.items()},
        }
        results_path.write_text(json.dumps(results, indent=1))
    write_table(args, spec, sets, results, names)


def write_table(args, spec, sets, results: dict, names: list[str]) -> None:
    lines = [
        f"# Distillation losses and training precision: {args.layers}-layer student of {args.teacher} ({args.task})",
        "",
        f"Produced by `python benchmarks/experiments/distill_losses.py --teacher {args.teacher} --task {args.task} "
        f"--layers {args.layers} --epochs {args.epochs:g} --variants {','.join(names)}` ({environment_line()}). "
        f"Each row: one `axformer distill` of teacher layers {args.layers}, {args.epochs:g} epoch(s) over the "
        "teacher's training part (twice that for the -twice row; augment: one perturbed copy of each text "
        "added; augment-long: four of each text of 15+ words), checkpoint chosen on its held-out split; then "
        "scored against the teacher "
        f"on {', '.join(f'{k} ({len(s)} examples)' for k, s in sets.items())}, which no step of it saw. "
        f"{spec.main_metric} in points; difference = student - teacher with its paired 95% bootstrap interval; "
        "changed = share of answers that differ from the teacher's (fixed: now right, broken: now wrong); training: "
        "the distillation's wall time as its model records it.",
        "",
        "| variant | "
        + " | ".join(f"{k}: difference (interval) | {k}: changed (fixed / broken)" for k in sets)
        + " | all: changed | training | code |",
        "|---|" + "---|---|" * len(sets) + "---|---|---|",
    ]
    for name in names:
        r = results.get(name)
        if r is None:
            continue
        cells = []
        for k in sets:
            a = r[k]
            cells.append(f"{a['difference']:+.2f} ({a['low']:+.2f} .. {a['high']:+.2f})")
            cells.append(f"{a['changed_pct']:.2f}% ({a['fixed']} / {a['broken']})")
        total = sum(r[k]["examples"] for k in sets)
        changed = sum(r[k]["changed_pct"] * r[k]["examples"] / 100 for k in sets)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {100 * changed / total:.2f}% of {total} | {r['minutes']:.1f} min"
            f" | {r['commit']} |"
        )
    target = ROOT / "benchmarks" / "results" / f"distill_losses_{args.task}.md"
    target.write_text("\n".join(lines) + "\n")
    print(f"written to {target}")


if __name__ == "__main__":
    main()
