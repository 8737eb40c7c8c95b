"""Which int4 formats should the size preset use now that matrices are rounded by GPTQ? Judged on held-out examples.

Usage (repository root): python benchmarks/experiments/int4_mrpc/size_formats.py [TASK ...]
    [--decision-data FILE] [--confirm-fraction F] [--formats BLOCK:ROUNDING:MIN_COUNT[:TABLE_BLOCK],...] [--name N]

For each task's fine-tuned baseline (``runs/baselines/TASK``) it exports the size preset's artifact (int4
matrices with Q/K/V, int4 tables in blocks of 128, pruned vocabulary from the training part, trimmed positions)
in several formats: matrices in blocks of 32 or 64, rounded to nearest or by GPTQ; vocabulary tokens kept when
the training part uses them at least once or twice. Each artifact is scored on up to 2,000 held-out examples
(never a vocabulary or calibration text; the dev set is not read) against the fp32 original: the share of answers
that change, the logit mean squared error and the main metric, with the model file's bytes and its ratio to the
original's. Writes results/size_formats.json and size_formats.md beside this script.

With ``--decision-data`` (a labelled file of held-out examples, as ``axformer optimize --decision-data`` takes)
and ``--confirm-fraction`` the formats are judged on the deciding part of that file only, the examples the
pipeline's own decisions use: the confirmation part stays unseen for the certificate, and dev is not read.
``--name`` keeps such a run's table apart (results/NAME.json, NAME.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _heldout import deciding_context

from axformer.benchmark.run import environment
from axformer.data.batching import encode
from axformer.evaluation.scores import score
from axformer.export.artifact import ExportConfig, export_model
from axformer.inference import run_model
from axformer.models.loading import load_tokenizer
from axformer.runtime.backends import OnnxModel
from axformer.surgery.vocabulary import VocabularyConfig

FORMATS = [  # (matrix block, rounding, vocabulary min count, table block)
    (32, "nearest", 2, 128),
    (32, "gptq", 2, 128),
    (64, "gptq", 2, 128),
    (64, "gptq", 1, 128),
    (32, "gptq", 1, 128),
]
HERE = Path(__file__).parent


def parse_formats(text: str) -> list[tuple[int, str, int, int]]:
    out = []
    for item in text.split(","):
        parts = item.split(":")
        out.append((int(parts[0]), parts[1], int(parts[2]), int(parts[3]) if len(parts) > 3 else 128))
    return out


def measure(task: str, formats, decision_data: str | None = None, confirm_fraction: float = 0.0) -> list[dict]:
    base = f"runs/baselines/{task}"
    ctx = deciding_context(task, decision_data, confirm_fraction)
    spec = ctx.data.spec
    reference = run_model(ctx.model, ctx.encoded, spec.is_regression, 64, "cpu")
    original_bytes = (Path(base) / "model.safetensors").stat().st_size
    rows = []
    for block, rounding, min_count, table_block in formats:
        out = Path(f"runs/experiments/size_formats/{task}-{block}-{rounding}-{min_count}-{table_block}")
        t0 = time.perf_counter()
        config = ExportConfig(
            precision="int4",
            embeddings="int4",
            int4_attention=True,
            int4_block_size=block,
            int4_table_block_size=table_block,
            int4_rounding=rounding,
            vocabulary=VocabularyConfig(prune=True, trim_positions=True, min_count=min_count),
            max_drop=100.0,
            device="cpu",
            confirm_fraction=confirm_fraction,
            decision_data=decision_data,
        )
        export_model(base, out, config, ctx.data, overwrite=True)
        seconds = time.perf_counter() - t0
        enc = encode(load_tokenizer(out), ctx.heldout, ctx.record.max_seq_length)
        outputs = run_model(OnnxModel(out), enc, spec.is_regression, 64, "cpu")
        metric = score(spec, ctx.heldout.labels, outputs).metrics[spec.main_metric]
        changed = (
            None
            if spec.is_regression
            else float(100 * (outputs.predictions(False) != reference.predictions(False)).mean())
        )
        size = (out / "model.onnx").stat().st_size
        rows.append(
            {
                "task": task,
                "main_metric": spec.main_metric,
                "block": block,
                "rounding": rounding,
                "min_count": min_count,
                "table_block": table_block,
                "decision_data": decision_data,
                "heldout_examples": len(ctx.heldout),
                "original": score(spec, ctx.heldout.labels, reference).metrics[spec.main_metric],
                "metric": metric,
                "changed_answers_pct": changed,
                "logit_mse": float(((outputs.logits - reference.logits) ** 2).mean()),
                "model_bytes": size,
                "ratio": original_bytes / size,
                "export_seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
        shutil.rmtree(out)
    return rows


def table(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        "# Size preset formats with GPTQ, judged on held-out examples",
        "",
        f"Produced by `{command}` ({env['machine']}, {env['cpu']}, "
        f"{env['cpu_flags']}, {env['cores']} cores; torch {env['torch']}, onnxruntime {env['onnxruntime']}). "
        "Artifact: int4 matrices (Q/K/V included), int4 tables (blocks of 128 unless the table block says), "
        "vocabulary pruned to the "
        "training part's tokens used at least `min count` times (others share their nearest kept neighbour's "
        "id), positions trimmed. Scored on up to 2,000 held-out examples (not the dev set; with a decision file, "
        "on the deciding part of it) against the fp32 original. Ratio: the original's model file over the "
        "artifact's.",
        "",
        "| task | examples | block | table block | rounding | min count | model MiB | ratio | changed answers | "
        "logit MSE | main metric (original) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = "-" if r["changed_answers_pct"] is None else f"{r['changed_answers_pct']:.2f}%"
        lines.append(
            f"| {r['task']} ({r['main_metric']}) | {r['heldout_examples']}"
            f"{' (' + Path(r['decision_data']).name + ')' if r.get('decision_data') else ''} | {r['block']} | "
            f"{r.get('table_block', 128)} | {r['rounding']} | {r['min_count']} | "
            f"{r['model_bytes'] / 2**20:.2f} | {r['ratio']:.2f}x | {changed} | {r['logit_mse']:.4f} | "
            f"{r['metric']:.2f} ({r['original']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tasks", nargs="*", default=["mrpc", "stsb", "sst2", "rte", "cola"])
    ap.add_argument("--decision-data", default=None)
    ap.add_argument("--confirm-fraction", type=float, default=0.0)
    ap.add_argument("--formats", type=parse_formats, default=FORMATS)
    ap.add_argument("--name", default="size_formats")
    args = ap.parse_args()
    store = HERE / "results" / f"{args.name}.json"
    stored = json.loads(store.read_text()) if store.exists() else {"rows": []}
    rows = [r for r in stored["rows"] if r["task"] not in args.tasks]
    command = " ".join(["python benchmarks/experiments/int4_mrpc/size_formats.py", *sys.argv[1:]])
    for task in args.tasks:
        rows += measure(task, args.formats, args.decision_data, args.confirm_fraction)
        env = environment()
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"environment": env, "command": command, "rows": rows}, indent=1))
        (HERE / f"{args.name}.md").write_text(table(rows, env, command))


if __name__ == "__main__":
    main()
