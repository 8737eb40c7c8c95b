"""Which embedding table costs what in int4? Each table alone rounded to the export's int4 grid, judged on held-out.

Usage (repository root): python benchmarks/experiments/int4_mrpc/table_sensitivity.py TASK
    [--decision-data FILE] [--confirm-fraction F] [--blocks 128,64,32]

The fine-tuned baseline (``runs/baselines/TASK``) in PyTorch, fp32 but for one embedding table (word, position or
token type) rounded to ONNX Runtime's int4 grid in blocks of B (``axformer.surgery.fake_quant.fake_quantize``,
tested equal to ONNX Runtime's own dequantized table), then all three at once. Each variant is scored on the
deciding part of the held-out examples (with a decision file: of that file) against the unrounded model: answers
changed, logit mean squared error, main metric. The vocabulary is not pruned: this isolates the rounding. Writes
results/table_sensitivity_TASK.json and table_sensitivity_TASK.md beside this script; dev is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _heldout import deciding_context

from axformer.benchmark.run import environment
from axformer.evaluation.scores import score
from axformer.inference import run_model
from axformer.surgery.fake_quant import embedding_tables, fake_quantize

HERE = Path(__file__).parent


def measure(task: str, blocks: list[int], decision_data: str | None, confirm_fraction: float) -> dict:
    ctx = deciding_context(task, decision_data, confirm_fraction)
    net, spec = ctx.model.eval(), ctx.data.spec
    reference = run_model(net, ctx.encoded, spec.is_regression, 64, "cpu")
    tables = {name: net.get_submodule(path) for name, path in embedding_tables(net).items()}
    original = {name: t.weight.detach().clone() for name, t in tables.items()}
    rows = []

    def run(rounded: dict[str, int], label: str) -> None:
        with torch.no_grad():
            for name, table in tables.items():
                w = original[name]
                table.weight.copy_(fake_quantize(w, 4, rounded[name]) if name in rounded else w)
        out = run_model(net, ctx.encoded, spec.is_regression, 64, "cpu")
        rows.append(
            {
                "tables": label,
                "changed_answers": None
                if spec.is_regression
                else int((out.predictions(False) != reference.predictions(False)).sum()),
                "logit_mse": float(((out.logits - reference.logits) ** 2).mean()),
                "metric": score(spec, ctx.heldout.labels, out).metrics[spec.main_metric],
            }
        )
        print(rows[-1], flush=True)

    for block in blocks:
        for name in tables:
            run({name: block}, f"{name} int4/{block}")
        run(dict.fromkeys(tables, block), f"all int4/{block}")
    run({}, "none (check: 0 changed)")
    return {
        "task": task,
        "main_metric": spec.main_metric,
        "examples": len(ctx.heldout),
        "decision_data": decision_data,
        "original": score(spec, ctx.heldout.labels, reference).metrics[spec.main_metric],
        "table_rows": {name: int(w.shape[0]) for name, w in original.items()},
        "rows": rows,
    }


def table(result: dict, env: dict, command: str) -> str:
    where = f"the deciding part of `{result['decision_data']}`" if result["decision_data"] else "held-out examples"
    lines = [
        f"# int4 embedding tables one at a time: {result['task']}",
        "",
        f"Produced by `{command}` ({env['machine']}, {env['cpu']}, {env['cpu_flags']}, {env['cores']} cores; torch "
        f"{env['torch']}). The baseline in PyTorch, fp32 but for the tables named, rounded to ONNX Runtime's int4 "
        f"grid; scored on {result['examples']} {where} against the unrounded model (main metric "
        f"{result['main_metric']} {result['original']:.2f}); vocabulary not pruned. Table rows: "
        + ", ".join(f"{k} {v}" for k, v in result["table_rows"].items())
        + ".",
        "",
        "| tables in int4 | changed answers | logit MSE | main metric |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        changed = "-" if r["changed_answers"] is None else str(r["changed_answers"])
        lines.append(f"| {r['tables']} | {changed} | {r['logit_mse']:.4f} | {r['metric']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task")
    ap.add_argument("--decision-data", default=None)
    ap.add_argument("--confirm-fraction", type=float, default=0.0)
    ap.add_argument("--blocks", default="128,64,32")
    args = ap.parse_args()
    result = measure(args.task, [int(b) for b in args.blocks.split(",")], args.decision_data, args.confirm_fraction)
    env = environment()
    command = " ".join(["python benchmarks/experiments/int4_mrpc/table_sensitivity.py", *sys.argv[1:]])
    out = HERE / "results" / f"table_sensitivity_{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "command": command, **result}, indent=1))
    (HERE / f"table_sensitivity_{args.task}.md").write_text(table(result, env, command))


if __name__ == "__main__":
    main()
