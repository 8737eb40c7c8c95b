"""The searched model as a file: the accepted state applied physically to a fresh copy of the original."""

from __future__ import annotations

import copy
from pathlib import Path

from axformer.attention.hard import set_attention
from axformer.models.loading import load_model, save_model
from axformer.surgery.prune import prune


def save_candidate(model, ctx, state: dict, directory: Path, config, goal: str):
    """Physically apply the state to a fresh copy of the original model and save it (with tokenizer and record)."""

    net = load_model(model, ctx.data.spec, allow_pickle=config.allow_pickle, device=ctx.device)
    prune(net, state["removed"])
    if state["attention"]:
        set_attention(net, {int(k): v for k, v in state["attention"].items()})
    directory.mkdir(parents=True, exist_ok=True)
    save_model(net, ctx.tokenizer, directory)
    record = copy.deepcopy(ctx.record)
    if record.task is None:
        record.task = {**ctx.data.spec.to_dict(), "source": ctx.data.source}
    record.split = ctx.split
    record.history = [
        *record.history,
        {
            "stage": "optimize",
            "goal": goal,
            "base_model": str(model),
            "removed": state["removed"],
            "attention": state["attention"],
        },
    ]
    record.save(directory)
    return net.eval()
