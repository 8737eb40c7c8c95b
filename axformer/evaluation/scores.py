"""Evaluating a model on the held-out split and the dev set(s), exactly as the benchmark scores it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from axformer.data.batching import Encoded, encode
from axformer.errors import AxformerError
from axformer.inference import Outputs, run_model
from axformer.models.loading import is_local, load_tokenizer
from axformer.models.record import ModelRecord, task_for
from axformer.runtime.backends import load_runnable
from axformer.tasks.data import Split, TaskData
from axformer.tasks.metrics import compute_metrics
from axformer.tasks.spec import TaskSpec
from axformer.tasks.splits import SplitRecord, apply_split, make_heldout_split
from axformer.utils.device import resolve_device
from axformer.utils.io import atomic_output_dir, write_json


@dataclass
class SplitResult:
    num_examples: int
    loss: float
    metrics: dict[str, float]
    main_metric: str

    @property
    def main(self) -> float:
        return self.metrics[self.main_metric]

    def to_dict(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "loss": self.loss,
            "main_metric": self.main_metric,
            "metrics": self.metrics,
        }


@dataclass
class Evaluation:
    task: str
    model: str
    splits: dict[str, SplitResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"task": self.task, "model": self.model, "splits": {k: v.to_dict() for k, v in self.splits.items()}}


def qa_predictions(labels: np.ndarray, outputs: Outputs) -> list[tuple[str, float]]:
    """Each question's best answer span over its windows (text, score), transformers' post-processing."""
    from axformer.data.qa_windows import best_answers

    if outputs.windows is None:
        raise AxformerError("question answering outputs without their windows; run the model on encode_qa's output")
    return best_answers(outputs.windows, outputs.windows.contexts, outputs.logits[..., 0], outputs.logits[..., 1])


def score(spec: TaskSpec, labels: np.ndarray, outputs: Outputs) -> SplitResult:
    if spec.is_qa:  # SQuAD's exact match and F1 over questions; the loss is the windows' start/end cross-entropy
        from axformer.evaluation.squad_metrics import answer_metrics

        if outputs.windows is None:
            raise AxformerError("question answering outputs without their windows; run the model on encode_qa's output")
        metrics = answer_metrics(outputs.windows, outputs.logits)
        return SplitResult(len(labels), outputs.mean_loss, metrics, spec.main_metric)
    preds = outputs.predictions(spec.is_regression)
    return SplitResult(len(labels), outputs.mean_loss, compute_metrics(spec.metrics, labels, preds), spec.main_metric)


def evaluation_splits(
    data: TaskData, split: SplitRecord | None, which: tuple[str, ...] = ("heldout", "dev")
) -> dict[str, Split]:
    """Named splits to evaluate: "heldout" (from the recorded split) and the task's dev split(s)."""
    out: dict[str, Split] = {}
    for name in which:
        if name == "heldout":
            if split is None:
                raise AxformerError(
                    "the model has no recorded held-out split; evaluate it on dev only (--split dev) "
                    "or fine-tune it with axformer"
                )
            out["heldout"] = apply_split(data, split)[1]
        elif name == "dev":
            out.update(data.dev)
        elif name in data.dev:
            out[name] = data.dev[name]
        else:
            raise AxformerError(f"unknown split {name!r}; expected heldout, dev or one of {', '.join(data.dev)}")
    return out


def predictions_rows(spec: TaskSpec, split: Split, outputs: Outputs):
    if spec.is_qa:
        for i, (e, (text, sc)) in enumerate(zip(split.labels, qa_predictions(split.labels, outputs))):
            yield {"index": i, "id": e.id, "prediction": text, "score": round(sc, 4), "answers": list(e.answers)}
        return
    if np.ndim(split.labels) > 1:  # targets are the original's embeddings: each text's cosine to its target
        from axformer.tasks.metrics import row_cosines

        for i, c in enumerate(row_cosines(split.labels, outputs.logits)):
            yield {"index": i, "cosine": round(float(c), 6)}
        return
    preds = outputs.predictions(spec.is_regression)
    for i in range(len(split)):
        yield {
            "index": i,
            "label": split.labels[i].item(),
            "prediction": preds[i].item(),
            "logits": [round(float(x), 6) for x in outputs.logits[i]],
        }


def evaluate(
    model: str | os.PathLike,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    splits: tuple[str, ...] = ("heldout", "dev"),
    batch_size: int = 64,
    max_examples: int | None = None,
    device: str = "auto",
    output: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> Evaluation:
    """Metrics of ``model`` on the requested splits; writes ``evaluation.json`` and predictions when ``output`` is set.

    The task and held-out split default to the ones recorded with the model.
    """
    record = ModelRecord.load(model) if is_local(model) else ModelRecord()
    data = task_for(model, data, data_dir)
    spec = data.spec
    split_record = record.split
    if split_record is None and "heldout" in splits:
        split_record = make_heldout_split(data.train)
    dev = resolve_device(device)
    net = load_runnable(
        model, spec, device=dev, allow_pickle=allow_pickle
    )  # a PyTorch model or an exported ONNX artifact
    tok = load_tokenizer(model)
    result = Evaluation(task=spec.name, model=str(model))
    outputs_by_split: dict[str, tuple[Split, Outputs]] = {}
    for name, split in evaluation_splits(data, split_record, splits).items():
        if max_examples is not None and len(split) > max_examples:
            split = split.subset(range(max_examples))
        enc: Encoded = encode(tok, split, record.max_seq_length, separate=spec.is_embedding)
        outs = run_model(net, enc, spec.is_regression, batch_size, dev, progress=f"evaluate {name}")
        result.splits[name] = score(spec, split.labels, outs)
        outputs_by_split[name] = (split, outs)
    if output is not None:
        with atomic_output_dir(output, overwrite=True, keep_partial=False) as work:
            write_json(work / "evaluation.json", result.to_dict())
            for name, (split, outs) in outputs_by_split.items():
                with open(work / f"predictions_{name}.jsonl", "w") as f:
                    for row in predictions_rows(spec, split, outs):
                        f.write(json.dumps(row) + "\n")
    return result
