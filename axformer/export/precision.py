"""Mixed precision guided by quantization sensitivity: per weight matrix fp32, int8 or int4.

The approximate-computing paper quantises the less significant weights
harder. Here significance is the analysis's quantization sensitivity (the
held-out loss change when one matrix alone is rounded to int8 or int4), and
every plan is judged on the real ONNX Runtime artifact, not on the
simulation:

1. all matrices int8; while the artifact breaks the tolerance, the most
   int8-sensitive matrices go back to fp32 (1, 2, 4, ... of them);
2. then the MatMul matrices (a fused Attention op has no 4-bit kernel), and
   the embedding tables where they are plain lookups, go to int4 in order of
   increasing int4 sensitivity (for the size objective: sensitivity per
   parameter, so a table of 4M values that costs as little as a 150k matrix
   goes first); the longest prefix that keeps the tolerance is found by
   bisection (sensitivity order makes the metric close to monotone in the
   prefix length; every probe is recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from axformer.export.quantize import WeightNode, apply_plan


@dataclass
class PlanProbe:
    int8_to_fp32: int
    int4: int
    metric: float
    size_bytes: int


@dataclass
class MixedPlan:
    plan: dict[str, str]  # node -> fp32/int8/int4
    components: dict[str, str]  # axformer component (or node) name -> precision
    metric: float
    probes: list[PlanProbe] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"components": self.components, "metric": self.metric, "probes": [asdict(p) for p in self.probes]}


def _parts(component: str) -> list[str]:
    """The PyTorch matrices behind a graph weight: a fused Attention holds Q, K and V."""
    if component.endswith(".qkv"):
        base = component[: -len(".qkv")]
        return [f"{base}.{k}" for k in ("q", "k", "v")]
    return [component]


def _sensitivity(node: WeightNode, rows: dict[str, float], bits: int) -> float:
    if node.component is None:
        return float("inf")  # unknown matrices are treated as sensitive: they get quantised last
    if node.component.endswith(".qkv"):
        base = node.component[: -len(".qkv")]
        vals = [rows.get(f"{base}.{k}@int{bits}") for k in ("q", "k", "v")]
        vals = [v for v in vals if v is not None] or [rows.get(f"{node.component}@int{bits}")]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else float("inf")
    v = rows.get(f"{node.component}@int{bits}")
    return float("inf") if v is None else v


def plan_mixed_precision(
    fused: Path,
    nodes: list[WeightNode],
    sensitivity: Callable[[int, list[str]], dict[str, float]],  # (bits, components) -> {"L3.ffn.down@int4": delta loss}
    score: Callable[[Path], float],  # held-out main metric of an ONNX file
    threshold: float,  # lowest acceptable metric
    work: Path,
    block_size: int = 32,
    int4_ops: tuple[str, ...] = ("MatMul",),
    table_block_size: int | None = None,
    objective: str = "metric",  # "size": int4 candidates ranked by sensitivity per parameter
) -> MixedPlan:
    probes: list[PlanProbe] = []

    def build(n_fp32: int, n_int4: int, by8: list[WeightNode], by4: list[WeightNode]) -> tuple[dict[str, str], float]:
        plan = {n.node: "int8" for n in nodes}
        for n in by8[:n_fp32]:
            plan[n.node] = "fp32"
        for n in [m for m in by4 if plan[m.node] == "int8"][:n_int4]:
            plan[n.node] = "int4"
        path = apply_plan(
            fused, work / f"plan_{n_fp32}_{n_int4}.onnx", plan, block_size, table_block_size=table_block_size
        )
        metric = score(path)
        probes.append(PlanProbe(n_fp32, n_int4, metric, path.stat().st_size))
        path.unlink()  # probes of a large model add up; the plan is re-applied at the end
        return plan, metric

    matmuls = [n for n in nodes if n.op_type in int4_ops]
    rows4 = sensitivity(4, [m.component for m in matmuls if m.component])

    def rank4(n: WeightNode) -> float:
        s = _sensitivity(n, rows4, 4)
        return s / max(n.shape[0] * n.shape[1], 1) if objective == "size" else s

    by4 = sorted(matmuls, key=rank4)
    n_fp32 = 0
    plan, metric = build(0, 0, [], by4)
    by8: list[WeightNode] = []
    if metric < threshold:  # int8 sensitivities are only needed when plain int8 is not good enough
        rows8 = sensitivity(8, [c for n in nodes if n.component for c in _parts(n.component)])
        by8 = sorted(nodes, key=lambda n: -_sensitivity(n, rows8, 8))
    while metric < threshold and n_fp32 < len(nodes):
        n_fp32 = min(len(nodes), max(1, 2 * n_fp32))
        plan, metric = build(n_fp32, 0, by8, by4)
    best = (plan, metric)
    if metric >= threshold:
        candidates = len([m for m in by4 if plan[m.node] == "int8"])
        lo, hi = 0, candidates  # lo passes; find the largest passing prefix
        while lo < hi:
            mid = (lo + hi + 1) // 2
            p, m = build(n_fp32, mid, by8, by4)
            if m >= threshold:
                lo, best = mid, (p, m)
            else:
                hi = mid - 1
    plan, metric = best
    names = {n.node: n.component or n.node for n in nodes}
    return MixedPlan(plan, {names[k]: v for k, v in plan.items()}, metric, probes)
