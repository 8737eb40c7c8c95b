"""The lean batch-1 path: one request at a time, nothing between the tokenizer and the ONNX Runtime session.

:class:`~axformer.runtime.predictor.Predictor` serves batches: it wraps the texts in a split, tokenizes through
transformers' tokenizer, sorts by length, collates through torch tensors, converts them back to numpy in
:class:`~axformer.runtime.backends.OnnxModel` and scatters the logits into an output array. For a service that
answers one request at a time, all of that is overhead around a session run of a millisecond or two.
:class:`LeanSession` calls the fast tokenizer's Rust backend once per request, hands its ids to the session as
int64 arrays without a copy through torch, and reads the logits row; the session options (threads, spinning,
graph optimization level, execution mode) are chosen by timing them on the machine at hand
(:func:`choose_session`), never assumed. :func:`axformer.runtime.breakdown.request_breakdown` says where the
time of one request goes, for the benchmark's report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from axformer.errors import AxformerError
from axformer.runtime.backends import inference_session, is_onnx_artifact, max_input_length, onnx_file, providers_for

Request = str | tuple[str, str]


def as_request(texts: Sequence[str]) -> Request:
    """A task example's texts (a 1- or 2-tuple, as splits hold them) as one lean request."""
    return texts[0] if len(texts) == 1 else (texts[0], texts[1])


@dataclass(frozen=True)
class SessionChoice:
    """ONNX Runtime session options for batch-1 serving."""

    threads: int = 1
    spinning: bool = True  # worker threads spin while waiting for work: lower latency, busier cores
    graph_level: str = "all"  # all | extended | basic (artifacts are fused at export; "all" adds layout rewrites)
    execution: str = "sequential"  # sequential | parallel (operators of independent branches side by side)

    def options(self):
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }
        if self.graph_level not in levels or self.execution not in ("sequential", "parallel") or self.threads < 1:
            raise AxformerError(
                f"session options {asdict(self)}; expected threads >= 1, graph_level all/extended/basic and "
                "execution sequential/parallel"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.graph_optimization_level = levels[self.graph_level]
        opts.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.execution == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        opts.log_severity_level = 3
        return opts


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def candidate_choices(cores: int | None = None) -> list[SessionChoice]:
    """The settings worth timing for batch-1 requests: each thread count up to the cores, spinning on and off, and
    the graph level and execution mode varied one at a time from the default."""
    cores = cores or _cores()
    threads = sorted({1, 2, cores} & set(range(1, cores + 1)))
    choices = [SessionChoice(threads=t, spinning=s) for t in threads for s in (True, False)]
    choices += [
        SessionChoice(threads=cores, graph_level="extended"),
        SessionChoice(threads=cores, execution="parallel"),
    ]
    return list(dict.fromkeys(choices))


class LeanSession:
    """Batch-1 inference on an exported classification, regression or embedding artifact: ``session(text)`` or
    ``session((first, second))`` gives the same logits row (or embedding) as ``Predictor(path).predict([text])[0]``
    (which, for one request, is this path over the predictor's own session).
    """

    def __init__(
        self, path: str | os.PathLike, choice: SessionChoice | None = None, device: str = "cpu", session=None
    ) -> None:
        """``session``: an ONNX Runtime session of ``path`` already open (``Predictor``'s), shared instead of a
        second copy of the weights; ``choice`` then only records what it was opened with."""

        from axformer.models.loading import load_tokenizer, read_config_json
        from axformer.models.record import ModelRecord

        if not is_onnx_artifact(path):
            raise AxformerError(f"{path} is not an exported artifact; the lean path serves a directory with model.onnx")
        task = ModelRecord.load(path).task or {}
        if (task.get("extra") or {}).get("problem") == "extractive-qa":
            raise AxformerError(
                f"{path} is a question answering model; its requests are a question with its context's windows: "
                "use Predictor.answer"
            )
        self.path, self.choice = path, choice or SessionChoice()
        tokenizer = load_tokenizer(path)
        if not getattr(tokenizer, "is_fast", False) or not (Path(path) / "tokenizer.json").is_file():
            raise AxformerError(f"{path} has no fast tokenizer (tokenizer.json); the lean path calls its Rust backend")
        # the backend as transformers drives it in encode(): longest-first truncation to the model's length, no
        # padding (one request), special tokens from its post-processor. Read from tokenizer.json, not copied:
        # a copy goes through the tokenizers serializer, which keeps one token per id and so drops the shared ids
        # of a pruned vocabulary (its unknown token among them)
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        self.backend.no_padding()
        self.backend.enable_truncation(max_input_length(path), strategy="longest_first")
        self.session = session or inference_session(onnx_file(path), self.choice.options(), providers_for(device))
        names = {i.name for i in self.session.get_inputs()}
        self.type_ids = "token_type_ids" in names and "token_type_ids" in tokenizer.model_input_names
        self.zero_types = "token_type_ids" in names and not self.type_ids
        self.output = [self.session.get_outputs()[0].name]
        labels = read_config_json(path).get("id2label") or {}
        # a regression head has one output (and transformers' default name LABEL_0): no labels to pick from
        self.labels = [labels.get(str(i), str(i)) for i in range(len(labels))] if len(labels) > 1 else []

    def tokenize(self, request: Request):
        return self.backend.encode(*request) if isinstance(request, tuple) else self.backend.encode(request)

    def feed(self, encoding) -> dict[str, np.ndarray]:
        ids = np.asarray(encoding.ids, dtype=np.int64)[None, :]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if self.type_ids:
            feed["token_type_ids"] = np.asarray(encoding.type_ids, dtype=np.int64)[None, :]
        elif self.zero_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        return feed

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(self.output, feed)[0][0]

    def __call__(self, request: Request) -> np.ndarray:
        return self.run(self.feed(self.tokenize(request)))

    def label(self, logits: np.ndarray) -> tuple[str, float]:
        """A classifier's answer: the most likely label and its probability (softmax of the logits row)."""
        if not self.labels or logits.shape[-1] != len(self.labels):
            raise AxformerError(f"{self.path} is not a classifier with named labels; read the logits instead")
        z = np.exp(logits - logits.max())
        p = z / z.sum()
        best = int(p.argmax())
        return self.labels[best], float(p[best])


def choose_session(
    path: str | os.PathLike,
    requests: Sequence[Request],
    choices: Sequence[SessionChoice] | None = None,
    rounds: int = 3,
) -> tuple[SessionChoice, list[dict]]:
    """The session options with the lowest median batch-1 latency on ``requests``, timed here in interleaved
    rounds (a slow spell of a shared machine hits every choice alike); every choice's median comes back too."""
    from axformer.runtime.timing import interleaved_medians

    if not requests:
        raise AxformerError("no requests to time the session options on")
    choices = list(choices or candidate_choices())
    sessions = [LeanSession(path, c) for c in choices]
    feeds = [sessions[0].feed(sessions[0].tokenize(r)) for r in requests]

    def timed(s: LeanSession):
        return lambda: [s.run(f) for f in feeds]

    medians = interleaved_medians({str(i): timed(s) for i, s in enumerate(sessions)}, 1, rounds, warmup=1)
    table = [{**asdict(c), "ms_per_request": medians[str(i)] * 1e3 / len(feeds)} for i, c in enumerate(choices)]
    best = min(range(len(choices)), key=lambda i: medians[str(i)])
    return choices[best], table
