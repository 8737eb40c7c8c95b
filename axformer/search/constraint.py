"""``--goal speed`` / ``--goal size``: remove the least significant components while the metric stays in tolerance.

Our design, in the spirit of the approximate-computing paper's constraint-driven
mode. Candidates go coarse to fine: whole layers, then blocks (attention, FFN),
then heads and FFN neuron groups together. Coarse first because one accepted
layer saves what dozens of heads and groups save, plus the per-layer overhead
(LayerNorms, residuals, kernel launches) that only a whole-layer removal
removes, so the target is reached in the fewest trials and with the largest
measured speed-up; the finer units then trim what the coarse ones could not.
Within a phase candidates are tried in order of significance per unit of cost
saved (gradient importance of the current model, re-computed after each
phase and every ``rerank_every`` acceptances, divided by the calibrated cost of
the component). A candidate is kept when every metric of the task (or, with
``guard="main"``, the main one) stays within the tolerance of the unpruned
model, and, if asked, the mean held-out loss stays within a bound; the search ends when the target is met or every
candidate was tried. With a target, a unit whose removal would overshoot it by more than 10% is left to the
next, finer phase (two layers and one block rather than three layers when the target lies between): the
smallest removal that meets the target is the one that costs least accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from axformer.analysis.gradient import gradient_importance
from axformer.search.acceptance import MetricTolerance
from axformer.search.cost import CostModel
from axformer.search.trials import Trials
from axformer.surgery.components import block_name, layer_name, neuron_group_range, parse
from axformer.surgery.structure import ModelStructure

PHASES = (("layer",), ("attn", "ffn"), ("head", "group"))
COARSE_PHASES = PHASES[:2]
OVERSHOOT = 1.1  # a coarse unit may take the predicted ratio at most 10% past the target


@dataclass
class ConstraintSearchConfig:
    goal: str = "speed"  # speed or size
    max_drop: float | None = 1.0  # points of the main metric
    max_rel_drop: float | None = None  # percent of the main metric
    target: float | None = (
        None  # speed-up (speed) or size reduction factor (size); None: as far as the tolerance allows
    )
    guard: str = "all"  # "all": the tolerance holds for every metric of the task; "main": for the main metric only
    max_loss_increase: float | None = None  # percent over the unpruned model's mean held-out loss; None: no loss bound
    groups: int = 12
    rerank_every: int = 8
    attention_modes: tuple[
        str, ...
    ] = ()  # speed: approximate attention tried per layer after pruning, where measured faster
    k: int = 30
    phases: tuple[tuple[str, ...], ...] = PHASES  # COARSE_PHASES: layers and blocks only
    # metrics guarded at a fixed level rather than relative to the original (an embedding model's cosine
    # fidelity); each applies when the engine reports it
    fixed_thresholds: dict[str, float] = field(default_factory=dict)


@dataclass
class ConstraintOutcome:
    removed: list[str] = field(default_factory=list)
    threshold: float = 0.0  # of the main metric
    thresholds: dict = field(default_factory=dict)  # every guarded metric
    max_loss: float | None = None
    rule: str = ""
    predicted_ratio: float = 1.0
    target_met: bool = False
    attention: dict = field(default_factory=dict)  # layer -> spec of accepted approximate attention
    attention_notes: list[str] = field(default_factory=list)


def threshold_for(reference: float, config: ConstraintSearchConfig) -> float:
    bounds = []
    if config.max_drop is not None:
        bounds.append(reference - config.max_drop)
    if config.max_rel_drop is not None:
        bounds.append(reference * (1 - config.max_rel_drop / 100))
    return max(bounds) if bounds else reference


def _units(structure: ModelStructure, kind: str, groups: int) -> list[str]:
    out = []
    for i in structure.present_layers:
        ls = structure.layers[i]
        if kind == "layer":
            out.append(layer_name(i))
        elif kind == "attn" and ls.heads:
            out.append(block_name(i, "attn"))
        elif kind == "ffn" and ls.neurons:
            out.append(block_name(i, "ffn"))
        elif kind == "head":
            out += structure.head_names(i)
        elif kind == "group":
            out += structure.group_names(i, groups)
    return out


def _significance(imp, name: str, structure: ModelStructure, groups: int) -> float:
    c = parse(name)
    table = {"layer": imp.layer, "attn": imp.attn, "ffn": imp.ffn}
    if c.kind in table:
        v = table[c.kind][c.layer]
    elif c.kind == "head":
        v = imp.heads[c.layer, c.index]
    else:
        v = np.nansum(imp.neurons[c.layer, list(neuron_group_range(c.index, c.groups, structure.ffn_dim))])
    return float(0.0 if np.isnan(v) else v)


def constraint_search(
    trials: Trials, structure: ModelStructure, cost: CostModel, config: ConstraintSearchConfig, progress: bool = False
) -> ConstraintOutcome:
    engine = trials.engine
    ref = engine.reference
    main = engine.spec.main_metric
    guarded = list(ref.metrics) if config.guard == "all" else [main]
    if "agreement" in ref.metrics and "agreement" not in guarded:  # fidelity to the original is always guarded
        guarded.append("agreement")
    guarded = [m for m in guarded if m not in config.fixed_thresholds]
    thresholds = {m: threshold_for(ref.metrics[m], config) for m in guarded}
    thresholds.update({m: t for m, t in config.fixed_thresholds.items() if m in ref.metrics})
    max_loss = None if config.max_loss_increase is None else ref.mean_loss * (1 + config.max_loss_increase / 100)
    rule = MetricTolerance(thresholds, engine.encoded.labels, engine.regression, max_loss)
    out = ConstraintOutcome(threshold=thresholds[main], thresholds=thresholds, max_loss=max_loss, rule=rule.describe())
    current = structure.copy()
    # the cost every ratio is taken against: the byte model's is the fp32 original's bytes (precision and
    # vocabulary count), the latency model's the unpruned structure's
    base_cost = cost.baseline if cost.baseline is not None else cost.predict(structure)

    def ratio(s: ModelStructure, extra_saving: float = 0.0) -> float:
        saving = sum(cost.attention_saving(spec["mode"]) for spec in out.attention.values()) + extra_saving
        return base_cost / max(cost.predict(s) - saving, 1e-12)

    def met() -> bool:
        return config.target is not None and ratio(current) >= config.target

    for phase, kinds in enumerate(config.phases):
        if met():
            break
        finer_phase_left = phase < len(config.phases) - 1
        tried: set[str] = set()
        since_rank = None
        while not met():
            if since_rank is None or since_rank >= config.rerank_every:
                trials.sync_base()  # gradients of the current model
                imp = gradient_importance(engine, config.groups, progress=progress)
                since_rank = 0
            names = [n for k in kinds for n in _units(current, k, config.groups) if n not in tried]
            names = [n for n in names if current.removed([n]).to_dict() != current.to_dict()]
            if config.target is not None and finer_phase_left:
                # a unit that would overshoot the target is left to the finer units of the next phase: the
                # smallest removal that meets the target is the one that costs least accuracy
                names = [n for n in names if ratio(current.removed([n])) <= config.target * OVERSHOOT]
            if not names:
                break
            saved = {n: cost.predict(current) - cost.predict(current.removed([n])) for n in names}
            ranked = sorted(
                names, key=lambda n: (_significance(imp, n, structure, config.groups) / max(saved[n], 1e-12), n)
            )
            name = ranked[0]
            tried.add(name)
            d = trials.run(
                f"constraint_{'_'.join(kinds)}",
                removed=[name],
                rule=rule,
                stop=rule,
                extra={"predicted_ratio_if_accepted": ratio(current.removed([name]))},
            )
            if d.accepted:
                trials.accept([name])
                current = current.removed([name])
                out.removed.append(name)
                since_rank += 1
    if config.goal == "speed":
        _approximate_attention_phase(trials, current, cost, config, rule, out, ratio, met)
    out.predicted_ratio = ratio(current)
    out.target_met = met()
    return out


def _approximate_attention_phase(
    trials: Trials,
    current: ModelStructure,
    cost: CostModel,
    config: ConstraintSearchConfig,
    rule,
    out: ConstraintOutcome,
    ratio,
    met,
) -> None:
    """Approximate attention per layer, last layer first, for each mode that the calibration measured faster than
    dense.
    """
    from axformer.attention.hard import HardAttention

    for mode in config.attention_modes:
        measured = (cost.attention or {}).get(mode)
        if measured is None:
            out.attention_notes.append(f"{mode} attention not tried: not measured for this model family")
            continue
        saving = cost.attention_saving(mode)
        if saving <= 0:
            out.attention_notes.append(
                f"{mode} attention not tried: measured slower than dense at {cost.seq_len} tokens "
                f"({measured['approx_ms']:.2f} ms vs {measured['dense_ms']:.2f} ms with "
                f"K={measured['k']} in every layer)"
            )
            continue
        for layer in reversed(current.present_layers):
            if met() or not current.layers[layer].heads or layer in out.attention:
                continue
            change = HardAttention(layer, config.k, mode == "topk", mode, "gather")
            d = trials.run(
                f"constraint_{mode}_attention",
                changes=[change],
                rule=rule,
                stop=rule,
                extra={"predicted_ratio_if_accepted": ratio(current, saving)},
            )
            if d.accepted:
                trials.accept((), [change])
                out.attention[layer] = change.spec()


def trial_bound(structure: ModelStructure, config: ConstraintSearchConfig) -> int:
    """The most trials this search can make: every unit of every phase once, then each attention mode per layer."""
    units = sum(len(_units(structure, kind, config.groups)) for kinds in config.phases for kind in kinds)
    attention = len(structure.present_layers) * len(config.attention_modes) if config.goal == "speed" else 0
    return units + attention
