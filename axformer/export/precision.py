"""Mixed precision guided by quantization sensitivity: per weight matrix fp32, int8 or int4 (at its own block size).

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
3. for the size objective, two more rungs of the same ladder, each a prefix
   found the same way: the matrices still int8 (the most int4-sensitive) go to
   int4 in blocks half as long (0.75 bytes a weight instead of about 1), and the
   least sensitive int4 matrices to blocks four times as long (0.53 instead of
   0.625).

With a byte target (the size goal's ``--target-size``), every rung stops at the
shortest prefix that reaches it: matrices the target does not need stay in the
finer format, because each one rounded is a decision that can cost accuracy on
data the plan never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from axformer.export.quantize import WeightNode, apply_plan, int4_format
from axformer.surgery.fake_quant import table_format

if TYPE_CHECKING:
    from axformer.export.gptq import Calibration


@dataclass
class PlanProbe:
    step: str  # the rung: "int8->fp32", "int8->int4", "int8->int4/16", "int4->int4/128"
    count: int  # matrices moved on that rung
    metric: float | None  # None: only the size was needed (the shortest prefix reaching the byte target)
    size_bytes: int


@dataclass
class MixedPlan:
    plan: dict[str, str]  # node -> fp32, int8, int4 (the default block) or int4/B
    components: dict[str, str]  # axformer component (or node) name -> precision
    metric: float
    size_bytes: int
    target_bytes: int | None = None
    probes: list[PlanProbe] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "components": self.components,
            "metric": self.metric,
            "size_bytes": self.size_bytes,
            "target_bytes": self.target_bytes,
            "probes": [asdict(p) for p in self.probes],
        }


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


def size_rungs(block_size: int) -> list[tuple[str, str]]:
    """The rungs after plain int4 for the size objective, as (from, to) formats; ONNX Runtime's 4-bit MatMul takes
    power-of-two blocks from 16."""
    rungs = []
    if block_size // 2 >= 16:
        rungs.append(("int8", int4_format(block_size // 2)))
    if block_size < 128:
        rungs.append(("int4", int4_format(min(4 * block_size, 128))))
    return rungs


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
    objective: str = "metric",  # "size": int4 candidates ranked by sensitivity per parameter, and finer rungs
    target_bytes: int | None = None,  # stop each rung as soon as the file is this small
    calibration: Calibration | None = None,  # int4 matrices rounded by GPTQ on these inputs (None: to nearest)
    keep_fp32: Sequence[str] = (),  # nodes outside ``nodes`` that stay fp32 in every probe (--exclude-node)
) -> MixedPlan:
    probes: list[PlanProbe] = []

    def probe(plan: dict[str, str], step: str, count: int, scored: bool = True) -> tuple[float | None, int]:
        path = apply_plan(
            fused, work / f"plan_{len(probes)}.onnx", plan, block_size, table_block_size=table_block_size,
            calibration=calibration, keep_fp32=keep_fp32,
        )  # fmt: skip
        size = path.stat().st_size
        metric = score(path) if scored else None
        probes.append(PlanProbe(step, count, metric, size))
        path.unlink()  # probes of a large model add up; the plan is re-applied at the end
        return metric, size

    def reached(size: int) -> bool:
        return target_bytes is not None and size <= target_bytes

    # int4 candidates: the matrices and the word table (the tables every token adds stay int8: table_format)
    matmuls = [
        n
        for n in nodes
        if n.op_type in int4_ops and (n.op_type == "MatMul" or table_format(n.component, "int4") == "int4")
    ]
    rows4 = sensitivity(4, [m.component for m in matmuls if m.component])

    def rank4(n: WeightNode) -> float:
        s = _sensitivity(n, rows4, 4)
        return s / max(n.shape[0] * n.shape[1], 1) if objective == "size" else s

    by4 = sorted(matmuls, key=rank4)
    plan = {n.node: "int8" for n in nodes}
    metric, size = probe(plan, "int8->fp32", 0)
    if metric < threshold:  # int8 sensitivities are only needed when plain int8 is not good enough
        rows8 = sensitivity(8, [c for n in nodes if n.component for c in _parts(n.component)])
        by8 = sorted(nodes, key=lambda n: -_sensitivity(n, rows8, 8))
        n_fp32 = 0
        while metric < threshold and n_fp32 < len(nodes):
            n_fp32 = min(len(nodes), max(1, 2 * n_fp32))
            plan = {n.node: "int8" for n in nodes} | {n.node: "fp32" for n in by8[:n_fp32]}
            metric, size = probe(plan, "int8->fp32", n_fp32)
    rungs = [("int8", "int4")] + (size_rungs(block_size) if objective == "size" else [])
    for step, (source, target) in enumerate(rungs):
        if metric < threshold or reached(size):
            break
        # the finer and coarser rungs are MatMul blocks; the tables keep their own block size
        candidates = [m for m in by4 if plan[m.node] == source and (step == 0 or m.op_type == "MatMul")]
        label = f"{source}->{target}"

        def prefix(
            k: int, base: dict[str, str] = plan, moved: list[WeightNode] = candidates, to: str = target
        ) -> dict[str, str]:
            return base | {m.node: to for m in moved[:k]}

        found = {0: (metric, size)}
        lo, hi = 0, len(candidates)  # lo passes; find the largest passing prefix
        while lo < hi:
            mid = (lo + hi + 1) // 2
            found[mid] = probe(prefix(mid), label, mid)
            if found[mid][0] >= threshold:
                lo = mid
            else:
                hi = mid - 1
        chosen = lo
        if lo > 0 and reached(found[lo][1]):  # the shortest prefix that reaches the target (sizes fall with k)
            a, b = 0, lo
            while b - a > 1:
                mid = (a + b) // 2
                s = found[mid][1] if mid in found else probe(prefix(mid), label, mid, scored=False)[1]
                a, b = (a, mid) if reached(s) else (mid, b)
            if found.get(b, (None,))[0] is None:
                found[b] = probe(prefix(b), label, b)
            chosen = b if found[b][0] >= threshold else lo
        plan = prefix(chosen)
        metric, size = found[chosen]
    names = {n.node: n.component or n.node for n in nodes}
    return MixedPlan(plan, {names[k]: v for k, v in plan.items()}, metric, size, target_bytes, probes)
