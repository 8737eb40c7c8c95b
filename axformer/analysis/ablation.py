"""Ablation significance (AxFormer's reference): remove one component, measure the held-out loss and metric.

Significance is measured, not estimated: each component is switched off by a
soft mask and the held-out split is evaluated (only the layers from the
component's layer up, thanks to the engine's prefix cache). Every row keeps
the per-example losses, which AxFormer's acceptance test compares with the
unpruned model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from axformer.evaluation.engine import CandidateResult, EvaluationEngine
from axformer.surgery.components import block_name, layer_name, parse
from axformer.surgery.structure import ModelStructure


@dataclass
class AblationRow:
    component: str
    kind: str  # layer, attn, ffn, head, group
    layer: int
    index: int | None
    mean_loss: float
    delta_loss: float  # against the unchanged model; negative: removing it helps
    metric: float
    delta_metric: float
    not_worse_fraction: float  # examples whose loss is <= their unchanged loss
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def ablation_candidates(structure: ModelStructure, groups: int = 12) -> list[str]:
    """Every single component still present: layers, blocks, heads and FFN neuron groups, top layer first."""
    names: list[str] = []
    for i in reversed(structure.present_layers):
        layer = structure.layers[i]
        names.append(layer_name(i))
        if layer.neurons:
            names += [block_name(i, "ffn"), *structure.group_names(i, groups)]
        if layer.heads:
            names += [block_name(i, "attn"), *structure.head_names(i)]
    return names


def ablation_row(engine: EvaluationEngine, component: str, result: CandidateResult) -> AblationRow:
    ref = engine.reference
    c = parse(component)
    main = engine.spec.main_metric
    return AblationRow(
        component=component,
        kind=c.kind,
        layer=c.layer,
        index=c.index,
        mean_loss=result.mean_loss,
        delta_loss=result.mean_loss - ref.mean_loss,
        metric=result.metrics[main],
        delta_metric=result.metrics[main] - ref.metrics[main],
        not_worse_fraction=float((result.losses <= ref.losses).mean()),
        seconds=result.seconds,
    )


def run_ablation(
    engine: EvaluationEngine,
    components: Iterable[str],
    done: dict[str, tuple[AblationRow, np.ndarray]] | None = None,
    on_row: Callable[[AblationRow, np.ndarray], None] | None = None,
    progress: bool = True,
) -> dict[str, tuple[AblationRow, np.ndarray]]:
    """Ablate each component alone; ``done`` rows (from an interrupted run) are kept, not re-evaluated."""
    from tqdm.auto import tqdm

    out = dict(done or {})
    todo = [c for c in components if c not in out]
    for name in tqdm(todo, desc="ablation", disable=not progress):
        result = engine.evaluate([name])
        row = ablation_row(engine, name, result)
        out[name] = (row, result.losses)
        if on_row is not None:
            on_row(row, result.losses)
    return out
