"""Which kept token should an unseen token share its id with? Alias rules compared on held-out examples.

Usage (repository root): python benchmarks/experiments/int4_mrpc/alias_strategies.py TASK
    [--decision-data FILE] [--confirm-fraction F]

The vocabulary the size preset keeps (every token the training part uses, ``plan_vocabulary``) is applied to the
fine-tuned baseline (``runs/baselines/TASK``) in PyTorch by mapping each removed token to a kept one, which is
what the pruned artifact computes in fp32. Three rules for choosing that kept token: the nearest by cosine of the
input embeddings (``vocabulary.unseen = "nearest"``, the default), the nearest by cosine of the fine-tuned
model's final [CLS] state for the token alone (``[CLS] token [SEP]``: what the task head sees of it), and the sum
of both cosines. Scored on the deciding part of the held-out examples against the unpruned model: answers
changed (regression: output mean squared error) and the main metric. Writes results/alias_strategies_TASK.json
and alias_strategies_TASK.md beside this script; dev is not read.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from _heldout import deciding_context

from axformer.benchmark.run import environment
from axformer.evaluation.context import vocabulary_texts
from axformer.evaluation.scores import score
from axformer.inference import run_model
from axformer.surgery.vocabulary import nearest_aliases, plan_vocabulary

HERE = Path(__file__).parent


@torch.no_grad()
def cls_states(net, tokenizer, size: int) -> torch.Tensor:
    out = []
    for ids in torch.arange(size).split(1024):
        batch = torch.stack(
            [torch.full_like(ids, tokenizer.cls_token_id), ids, torch.full_like(ids, tokenizer.sep_token_id)], 1
        )
        hidden = net(input_ids=batch, attention_mask=torch.ones_like(batch), output_hidden_states=True).hidden_states
        out.append(hidden[-1][:, 0])
    return torch.cat(out)


def measure(task: str, decision_data: str | None, confirm_fraction: float) -> dict:
    ctx = deciding_context(task, decision_data, confirm_fraction)
    net, spec = ctx.model.eval(), ctx.data.spec
    reference = run_model(net, ctx.encoded, spec.is_regression, 64, "cpu")
    plan = plan_vocabulary(ctx.tokenizer, vocabulary_texts(ctx, None, None), False, 1)
    table = net.get_input_embeddings().weight.detach()
    states = cls_states(net, ctx.tokenizer, len(table))

    def unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.float(), dim=-1)

    rows = []
    # the export's own rule (nearest_aliases: cosine) in each space; "both" concatenates the unit vectors, whose
    # cosine is the mean of the two cosines
    for rule, space in (
        ("input embedding (default)", table),
        ("final [CLS] state", states),
        ("both", torch.cat([unit(table), unit(states)], -1)),
    ):
        lookup = np.arange(len(table))
        for old, new in nearest_aliases(space, plan.kept).items():
            lookup[old] = plan.kept[new]
        encoded = copy.deepcopy(ctx.encoded)
        encoded.input_ids = [lookup[ids] for ids in encoded.input_ids]
        out = run_model(net, encoded, spec.is_regression, 64, "cpu")
        rows.append(
            {
                "rule": rule,
                "changed": float(((out.logits - reference.logits) ** 2).mean())
                if spec.is_regression
                else int((out.predictions(False) != reference.predictions(False)).sum()),
                "metric": score(spec, ctx.heldout.labels, out).metrics[spec.main_metric],
            }
        )
        print(rows[-1], flush=True)
    return {
        "task": task,
        "main_metric": spec.main_metric,
        "regression": spec.is_regression,
        "examples": len(ctx.heldout),
        "decision_data": decision_data,
        "kept": len(plan.kept),
        "original": score(spec, ctx.heldout.labels, reference).metrics[spec.main_metric],
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task")
    ap.add_argument("--decision-data", default=None)
    ap.add_argument("--confirm-fraction", type=float, default=0.4)
    args = ap.parse_args()
    r = measure(args.task, args.decision_data, args.confirm_fraction)
    env = environment()
    command = " ".join(["python benchmarks/experiments/int4_mrpc/alias_strategies.py", *sys.argv[1:]])
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"alias_strategies_{args.task}.json").write_text(
        json.dumps({"environment": env, "command": command, **r}, indent=1)
    )
    where = f"the deciding part of `{r['decision_data']}`" if r["decision_data"] else "the deciding held-out part"
    changed = "output MSE" if r["regression"] else "changed answers"
    lines = [
        f"# Alias rules for unseen tokens: {r['task']}",
        "",
        f"Produced by `{command}` ({env['machine']}, {env['cpu']}, {env['cores']} cores; torch {env['torch']}). "
        f"Kept vocabulary: {r['kept']} tokens (the training part's). Scored on {r['examples']} examples of {where} "
        f"against the unpruned model ({r['main_metric']} {r['original']:.2f}).",
        "",
        f"| alias of an unseen token: nearest kept token by | {changed} | {r['main_metric']} |",
        "|---|---|---|",
        *(
            f"| {row['rule']} | {row['changed']:.4f} | {row['metric']:.2f} |"
            if r["regression"]
            else f"| {row['rule']} | {row['changed']} | {row['metric']:.2f} |"
            for row in r["rows"]
        ),
    ]
    (HERE / f"alias_strategies_{args.task}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
