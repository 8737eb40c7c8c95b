"""``--goal accuracy``: AxFormer's accuracy-driven search, exactly as published.

1. Hard attention, layer by layer (first to last by default): switch the layer
   to top-K hard attention; keep it if the acceptance test passes. With
   sign-matching attention enabled (``attention_modes``), a layer whose top-K
   trial is rejected tries sign-matching attention with the same K next.
2. Pruning from the last layer to the first. In each layer, try the whole FFN
   block; if it is rejected but its loss is below ``slack`` x the best loss so
   far, try each of the ``groups`` FFN neuron groups greedily. Then the same for
   the attention block, descending to the heads.

Every candidate is judged by the acceptance rule (AxFormer's two-part test by
default) on the held-out split only. Evaluations stop early once a candidate
can neither pass nor qualify for the descent (which changes no decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axformer.attention.hard import HardAttention
from axformer.evaluation.engine import PartialResult
from axformer.search.acceptance import AxFormerAcceptance, PairedImprovement
from axformer.search.trials import Trials
from axformer.surgery.components import block_name


@dataclass
class AccuracySearchConfig:
    k: int = 30
    renormalize: bool = False
    attention_modes: tuple[str, ...] = (
        "topk",
    )  # tried in this order per layer: "topk" (AxFormer), "sign" (sign-matching)
    slack: float = 1.1
    fraction: float = 0.5
    groups: int = 12
    attention_layers: list[int] | None = None  # order of the hard-attention phase (default: 0 .. L-1)
    prune_layers: list[int] | None = None  # order of the pruning phase (default: L-1 .. 0)
    rule: str = "axformer"  # "axformer" (the published two-part test) or "paired" (PairedImprovement)
    alpha: float = 0.05  # paired: family-wise error over the search's trials


@dataclass
class _DescendOrAccept:
    """Stop a block's evaluation only when it can neither be accepted nor fall under slack x min_loss."""

    rule: AxFormerAcceptance
    slack: float

    def hopeless(self, partial: PartialResult) -> bool:
        below_slack_possible = (
            float(partial.losses[partial.done].sum()) / len(partial.losses) < self.slack * self.rule.min_loss
        )
        return self.rule.hopeless(partial) and not below_slack_possible


@dataclass
class SearchOutcome:
    removed: list[str] = field(default_factory=list)
    attention: dict[int, dict] = field(default_factory=dict)
    min_loss: float = 0.0
    rule: str = ""  # the acceptance rule, described


def accuracy_search(
    trials: Trials, structure, config: AccuracySearchConfig, hard_attention_supported: bool = True
) -> SearchOutcome:
    ref = trials.engine.reference
    labels = None  # the paired rule's test on answers: a classification task's deciding labels
    if config.rule == "paired":
        spec = trials.engine.spec
        labels = None if spec.is_regression or spec.is_qa or spec.is_embedding else trials.engine.encoded.labels
    rule = make_rule(config, ref, trial_bound(structure, config, hard_attention_supported), labels)
    if isinstance(rule, PairedImprovement):
        rule.current = trials.current_result
    out = SearchOutcome(rule=rule.describe())
    present = structure.present_layers

    def accept(d, removed=(), changes=()):
        rule.accepted(d.mean_loss, d.losses)
        trials.accept(removed, changes)

    if config.attention_modes and hard_attention_supported:
        for layer in config.attention_layers if config.attention_layers is not None else present:
            if structure.layers[layer] is None or not structure.layers[layer].heads:
                continue
            for mode in config.attention_modes:
                change = HardAttention(layer, config.k, config.renormalize, mode)
                d = trials.run(
                    "hard_attention" if mode == "topk" else "sign_attention", changes=[change], rule=rule, stop=rule
                )
                if d.accepted:
                    accept(d, changes=[change])
                    out.attention[layer] = change.spec()
                    break
    descend = _DescendOrAccept(rule, config.slack)
    for layer in config.prune_layers if config.prune_layers is not None else list(reversed(present)):
        ls = structure.layers[layer]
        if ls is None:
            continue
        for block, units in (
            ("ffn", structure.group_names(layer, config.groups)),
            ("attn", structure.head_names(layer)),
        ):
            if (block == "ffn" and not ls.neurons) or (block == "attn" and not ls.heads):
                continue
            name = block_name(layer, block)
            d = trials.run(f"prune_{block}", removed=[name], rule=rule, stop=descend)
            if d.accepted:
                accept(d, removed=[name])
                out.removed.append(name)
                continue
            if not (d.complete and d.mean_loss < config.slack * rule.min_loss):
                continue  # important block: not refined
            for unit in units:
                du = trials.run(f"prune_{block}_unit", removed=[unit], rule=rule, stop=rule)
                if du.accepted:
                    accept(du, removed=[unit])
                    out.removed.append(unit)
    out.min_loss = rule.min_loss
    return out


def trial_bound(structure, config: AccuracySearchConfig, hard_attention_supported: bool = True) -> int:
    """The most trials this search can make (each block, then each of its units, once; each attention mode once)."""
    attention_layers = config.attention_layers if config.attention_layers is not None else structure.present_layers
    n = len(attention_layers) * len(config.attention_modes) if hard_attention_supported else 0
    layers = config.prune_layers if config.prune_layers is not None else structure.present_layers
    for layer in layers:
        if structure.layers[layer] is not None:
            n += 2 + len(structure.group_names(layer, config.groups)) + len(structure.head_names(layer))
    return n


def make_rule(config: AccuracySearchConfig, reference, trials: int, labels=None):
    """The acceptance rule the accuracy search decides with (``labels``: a classification task's deciding
    labels, for the paired rule's test on answers)."""
    if config.rule == "paired":
        return PairedImprovement(
            reference.losses, reference.mean_loss, config.alpha, trials, labels=labels, baseline_logits=reference.logits
        )
    return AxFormerAcceptance(reference.losses, reference.mean_loss, config.fraction)
