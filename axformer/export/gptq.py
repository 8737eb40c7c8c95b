"""int4 matrices rounded by GPTQ on the graph the export writes: the rounding that moves each layer's output least.

Round-to-nearest puts every weight on its closest level; GPTQ (Frantar et al., 2023) rounds one input feature at a
time and spreads each error over the features not yet rounded, weighted by the second moment of the layer's
inputs (``H = X^T X``), so what it minimises is the change of the layer's *output* on inputs like the calibration
texts. Measured on the fine-tuned MiniLMs with every encoder matrix in int4 blocks of 32 (held-out examples the
calibration never saw; ``benchmarks/experiments/int4_mrpc/gptq_fidelity.py``): it halves the logit error of
round-to-nearest (docs/size.md has the table).

The inputs ``X`` of each MatMul are read from the fp32 graph itself (its intermediate tensors made outputs), one
calibration example per run, so no padding enters ``H``. The rounded weights are written back into the fp32
graph on ONNX Runtime's int4 grid (``axformer.surgery.fake_quant.gptq_round``), and ONNX Runtime's own quantizer
then stores exactly those levels: the format, the kernels and the byte count are the same as round-to-nearest's.
ONNX Runtime ships a GPTQ too (from Neural Compressor); it re-quantizes its result with another scale rule,
rounding a second time, and accumulates ``H`` over padded batches.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from axformer.surgery.fake_quant import gptq_round


def _key(path: Path) -> tuple[str, int, int]:
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class Calibration:
    """The inputs GPTQ is fitted on (ONNX feeds of one sequence each), with what it computed from them cached: the
    Hessians of each graph's MatMul inputs and the rounded matrices, so a precision plan that probes many prefixes
    rounds each matrix once."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], damping: float = 0.01) -> None:
        if not feeds:
            raise ValueError("GPTQ needs at least one calibration input")
        self.feeds = feeds
        self.damping = damping
        self._hessians: dict[tuple, np.ndarray] = {}
        self._rounded: dict[tuple, np.ndarray] = {}

    @classmethod
    def from_encoded(cls, encoded, damping: float = 0.01) -> Calibration:
        """Feeds from a tokenised split: every sequence alone (a pair of a bi-encoder is two sequences)."""
        feeds = []
        for j, ids in enumerate(encoded.input_ids):
            feed = {"input_ids": ids[None, :], "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
            if encoded.token_type_ids is not None:
                feed["token_type_ids"] = encoded.token_type_ids[j][None, :]
            feeds.append(feed)
        return cls(feeds, damping)

    def hessians(self, source: Path, inputs: list[str]) -> dict[str, np.ndarray]:
        """``X^T X`` (float64) of each named tensor of ``source`` over the calibration feeds."""
        import onnxruntime as ort

        key = _key(source)
        missing = [name for name in dict.fromkeys(inputs) if (key, name) not in self._hessians]
        if missing:
            model = onnx.load(str(source))
            model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in missing)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            sums: dict[str, np.ndarray] = {}
            rows: dict[str, list[np.ndarray]] = {name: [] for name in missing}

            def flush() -> None:  # one float32 product per chunk of feeds, summed in float64
                for name, parts in rows.items():
                    if parts:
                        x = np.concatenate(parts)
                        sums[name] = sums.get(name, 0.0) + (x.T @ x).astype(np.float64)
                        parts.clear()

            for j, feed in enumerate(self.feeds):
                for name, x in zip(missing, session.run(missing, {k: v for k, v in feed.items() if k in names})):
                    rows[name].append(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]))
                if j % 64 == 63:
                    flush()
            flush()
            for name in missing:
                self._hessians[(key, name)] = sums[name]
        return {name: self._hessians[(key, name)] for name in inputs}

    def round_matrices(self, source: str | os.PathLike, target: str | os.PathLike, blocks: dict[str, int]) -> Path:
        """``source`` with the weights of the MatMul nodes named in ``blocks`` (node -> int4 block size) rounded by
        GPTQ onto the int4 grid of that block size; any other node, and a weight shared by several nodes (tied:
        one rounding cannot fit two inputs), is left as it is."""
        source, target = Path(source), Path(target)
        key = _key(source)
        model = onnx.load(str(source))
        inits = {i.name: i for i in model.graph.initializer}
        uses = Counter(name for node in model.graph.node for name in node.input)
        chosen = [
            n
            for n in model.graph.node
            if n.name in blocks and n.op_type == "MatMul" and n.input[1] in inits and uses[n.input[1]] == 1
        ]
        todo = [n for n in chosen if (key, n.name, blocks[n.name]) not in self._rounded]
        hessians = self.hessians(source, [n.input[0] for n in todo])
        for n in chosen:
            cached = (key, n.name, blocks[n.name])
            if cached not in self._rounded:
                w = numpy_helper.to_array(inits[n.input[1]])  # [in, out]: the graph multiplies x @ W
                rounded = gptq_round(
                    torch.from_numpy(np.ascontiguousarray(w.T)),
                    torch.from_numpy(hessians[n.input[0]]),
                    4,
                    blocks[n.name],
                    self.damping,
                )
                self._rounded[cached] = np.ascontiguousarray(rounded.numpy().T)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(self._rounded[cached], n.input[1]))
        onnx.save(model, str(target))
        return target
