"""Quantization sensitivity: the held-out loss change when one weight matrix is fake-quantised.

For the mixed-precision planner (the approximate-computing paper's
"quantization of less significant weights"): each linear layer of the encoder
is rounded on its own to int8 (symmetric, per output channel: what ONNX
Runtime's dynamic quantizer does with per-channel weights) and to int4
(symmetric, per output channel in blocks of ``block_size`` input features: what
ONNX Runtime's 4-bit MatMul executes), and the held-out split is re-scored
from that layer up. Weights are restored exactly afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from axformer.evaluation.engine import EvaluationEngine
from axformer.surgery.fake_quant import fake_quantize


@dataclass
class FakeQuant:
    """An engine ``Change``: one linear layer's (or embedding table's) weights replaced by their quantised values.

    An embedding table is rounded per row (blocks along the hidden axis, as ONNX Runtime's 4-bit Gather
    stores it) and has ``layer`` -1: everything is recomputed from the input."""

    layer: int
    name: str  # e.g. L3.attn.q
    module_path: str  # its name in model.named_modules(), for exporters
    bits: int
    block_size: int | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@int{self.bits}"

    @contextmanager
    def applied(self, model, adapter) -> Iterator[None]:
        linear = model.get_submodule(self.module_path)
        original = linear.weight.data
        linear.weight.data = fake_quantize(original, self.bits, self.block_size)
        try:
            yield
        finally:
            linear.weight.data = original


def encoder_linears(engine: EvaluationEngine) -> list[tuple[int, str, str]]:
    """(original layer, matrix name, module path) of every weight matrix in the encoder's layers."""
    paths = {id(m): n for n, m in engine.model.named_modules()}
    return [
        (orig, name, paths[id(linear)])
        for orig, name, linear in engine.adapter.named_linears(engine.model, engine.structure.present_layers)
    ]


@dataclass
class QuantRow:
    name: str
    module_path: str
    layer: int
    bits: int
    mean_loss: float
    delta_loss: float
    metric: float
    delta_metric: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def run_quant_sensitivity(
    engine: EvaluationEngine,
    bits: Iterable[int] = (8, 4),
    block_size: int = 32,
    done: dict[str, QuantRow] | None = None,
    on_row: Callable[[QuantRow], None] | None = None,
    progress: bool = True,
) -> dict[str, QuantRow]:
    out = dict(done or {})
    ref = engine.reference
    main = engine.spec.main_metric
    todo = [
        FakeQuant(layer, name, path, b, block_size if b < 8 else None)
        for layer, name, path in encoder_linears(engine)
        for b in bits
    ]
    todo = [c for c in todo if c.key not in out]
    for change in tqdm(todo, desc="quantization sensitivity", disable=not progress):
        r = engine.evaluate(changes=[change])
        row = QuantRow(
            change.name,
            change.module_path,
            change.layer,
            change.bits,
            r.mean_loss,
            r.mean_loss - ref.mean_loss,
            r.metrics[main],
            r.metrics[main] - ref.metrics[main],
            r.seconds,
        )
        out[change.key] = row
        if on_row is not None:
            on_row(row)
    return out
