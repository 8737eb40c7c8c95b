"""Which int4 formats should the size preset use now that matrices are rounded by GPTQ? Judged on held-out examples.

Usage (repository root): python benchmarks/experiments/int4_mrpc/size_formats.py [TASK ...]

For each task's fine-tuned baseline (``runs/baselines/TASK``) it exports the size preset's artifact (int4
matrices with Q/K/V, int4 tables in blocks of 128, pruned vocabulary from the training part, trimmed positions)
in several formats: matrices in blocks of 32 or 64, rounded to nearest or by GPTQ; vocabulary tokens kept when
the training part uses them at least once or twice. Each artifact is scored on up to 2,000 held-out examples
(never a vocabulary or calibration text; the dev set is not read) against the fp32 original: the share of answers
that change, the logit mean squared error and the main metric, with the model file's bytes and its ratio to the
original's. Writes results/size_formats.json and size_formats.md beside this script.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from axformer.benchmark.run import environment
from axformer.data.batching import encode
from axformer.evaluation.context import load_context
from axformer.evaluation.scores import score
from axformer.export.artifact import ExportConfig, export_model
from axformer.inference import run_model
from axformer.models.loading import load_tokenizer
from axformer.runtime.backends import OnnxModel
from axformer.surgery.vocabulary import VocabularyConfig

FORMATS = [  # (matrix block, rounding, vocabulary min count)
    (32, "nearest", 2),
    (32, "gptq", 2),
    (64, "gptq", 2),
    (64, "gptq", 1),
    (32, "gptq", 1),
]
HERE = Path(__file__).parent
STORE = HERE / "results" / "size_formats.json"


def measure(task: str) -> list[dict]:
    base = f"runs/baselines/{task}"
    ctx = load_context(base, data_dir="../shared/data/glue", max_examples=2000, device="cpu")
    spec = ctx.data.spec
    reference = run_model(ctx.model, ctx.encoded, spec.is_regression, 64, "cpu")
    original_bytes = (Path(base) / "model.safetensors").stat().st_size
    rows = []
    for block, rounding, min_count in FORMATS:
        out = Path(f"runs/experiments/size_formats/{task}-{block}-{rounding}-{min_count}")
        t0 = time.perf_counter()
        config = ExportConfig(
            precision="int4",
            embeddings="int4",
            int4_attention=True,
            int4_block_size=block,
            int4_table_block_size=128,
            int4_rounding=rounding,
            vocabulary=VocabularyConfig(prune=True, trim_positions=True, min_count=min_count),
            max_drop=100.0,
            device="cpu",
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


def table(rows: list[dict], env: dict) -> str:
    lines = [
        "# Size preset formats with GPTQ, judged on held-out examples",
        "",
        f"Produced by `python benchmarks/experiments/int4_mrpc/size_formats.py` ({env['machine']}, {env['cpu']}, "
        f"{env['cpu_flags']}, {env['cores']} cores; torch {env['torch']}, onnxruntime {env['onnxruntime']}). "
        "Artifact: int4 matrices (Q/K/V included), int4 tables in blocks of 128, vocabulary pruned to the "
        "training part's tokens used at least `min count` times (others share their nearest kept neighbour's "
        "id), positions trimmed. Scored on up to 2,000 held-out examples (not the dev set) against the fp32 "
        "original. Ratio: the original's model file over the artifact's.",
        "",
        "| task | block | rounding | min count | model MiB | ratio | changed answers | logit MSE | main metric "
        "(original) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = "-" if r["changed_answers_pct"] is None else f"{r['changed_answers_pct']:.2f}%"
        lines.append(
            f"| {r['task']} ({r['main_metric']}) | {r['block']} | {r['rounding']} | {r['min_count']} | "
            f"{r['model_bytes'] / 2**20:.2f} | {r['ratio']:.2f}x | {changed} | {r['logit_mse']:.4f} | "
            f"{r['metric']:.2f} ({r['original']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    tasks = sys.argv[1:] or ["mrpc", "stsb", "sst2", "rte", "cola"]
    stored = json.loads(STORE.read_text()) if STORE.exists() else {"rows": []}
    rows = [r for r in stored["rows"] if r["task"] not in tasks]
    for task in tasks:
        rows += measure(task)
        env = environment()
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
        (HERE / "size_formats.md").write_text(table(rows, env))


if __name__ == "__main__":
    main()
