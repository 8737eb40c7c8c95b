"""Which 4-bit weight format stays closest to the fp32 model? (issue: ten times smaller; an exploration)

Usage:  python benchmarks/experiments/int4_formats.py   (needs runs/promises/mrpc-most-accurate/4-export, the
        fp32 artifact of the MRPC baseline, and ../shared/data/glue)

Every MatMul of the artifact in int4 with ONNX Runtime's MatMulNBits quantizer: round-to-nearest symmetric
(axformer's format) and asymmetric at blocks of 32, 64 and 128, and HQQ at the same blocks; per format the file
size, the share of answers changed against fp32 and the mean absolute logit change on 600 MRPC *training*
pairs (not dev: this chooses a format). Models are written under runs/int4asym/.
"""

import csv
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)
from transformers import AutoTokenizer

SOURCE = Path("runs/promises/mrpc-most-accurate/4-export")
OUT = Path("runs/int4asym")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(SOURCE)
    with open("../shared/data/glue/MRPC/train.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:600]
    keys = list(rows[0].keys())
    first, second = [r[keys[3]] for r in rows], [r[keys[4]] for r in rows]

    def run(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in s.get_inputs()]
        out = []
        for i in range(0, len(first), 32):
            enc = tok(first[i : i + 32], second[i : i + 32], padding=True, truncation=True, max_length=128,
                      return_tensors="np")  # fmt: skip
            out.append(s.run(None, {k: enc[k].astype(np.int64) for k in names})[0])
        return np.concatenate(out)

    def quantize(name: str, config) -> Path:
        q = MatMulNBitsQuantizer(onnx.load(str(SOURCE / "model.onnx")), algo_config=config)
        q.process()
        path = OUT / f"{name}.onnx"
        q.model.save_model_to_file(str(path), False)
        return path

    ref = run(SOURCE / "model.onnx")
    formats = {
        f"{'sym' if sym else 'asym'}{bs}": DefaultWeightOnlyQuantConfig(
            block_size=bs, is_symmetric=sym, op_types_to_quantize=("MatMul",), quant_format=QuantFormat.QOperator
        )
        for bs in (32, 64, 128)
        for sym in (True, False)
    }
    formats.update(
        {f"hqq{bs}": HQQWeightOnlyQuantConfig(block_size=bs, op_types_to_quantize=("MatMul",)) for bs in (32, 64, 128)}
    )
    for name, config in formats.items():
        path = quantize(name, config)
        o = run(path)
        changed = 100 * (o.argmax(1) != ref.argmax(1)).mean()
        print(f"{name}: size {path.stat().st_size / 2**20:.2f} MiB, answers changed {changed:.2f}%, "
              f"mean |dlogit| {np.abs(o - ref).mean():.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
