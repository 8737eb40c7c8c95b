"""The predictor a service uses: texts in, logits (or embeddings) out, with dynamic length and optional
multi-instance throughput.

* Inputs are tokenised and truncated exactly as in training (the model's
  recorded ``max_seq_length``, pairs truncated longest-first).
* Requests are grouped by length and each batch is padded only to its longest
  member (FastFormers' dynamic sequence length).
* One request (a single text, or a classifier's pair) on an exported artifact skips all of that: the fast
  tokenizer's Rust backend feeds the session directly (:class:`axformer.runtime.lean.LeanSession` on the same
  session). Measured on a 1-layer MiniLM embedder (session 25, ``benchmarks/results/embedding_sts.md``): the
  batch path spent 0.71 ms per text where the session ran for about 0.3.
* ``instances > 1`` runs FastFormers' multi-instance inference: that many worker
  processes, each pinned to its own cores with its own session and threads,
  fed batches from one queue. On a CPU with few cores, several single-threaded
  instances usually beat one multi-threaded one at batch throughput because
  small matrix products do not parallelise well.
Predictions are the same in every mode, logits to float rounding (kernels split their sums by thread count;
tested).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from axformer.data.batching import Encoded, collate, encode, sorted_batches
from axformer.errors import AxformerError
from axformer.inference import store_logits
from axformer.models.loading import is_embedding_model, load_tokenizer
from axformer.models.record import ModelRecord
from axformer.runtime.backends import load_runnable, max_input_length
from axformer.tasks.data import Split

Texts = Sequence[str] | Sequence[tuple[str, str]]


def _as_split(texts: Texts) -> Split:
    rows = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    if rows and len({len(r) for r in rows}) != 1:
        raise AxformerError("inputs mix single texts and text pairs; expected one kind")
    return Split("inputs", rows, np.full(len(rows), -1, dtype=np.int64))


def core_sets(instances: int, cores: list[int] | None = None) -> list[list[int]]:
    """Split the usable cores into ``instances`` disjoint sets (each instance gets at least one)."""
    cores = (
        cores
        if cores is not None
        else sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if instances > len(cores):
        raise AxformerError(
            f"--instances {instances}; this machine offers {len(cores)} cores (at most one instance per core)"
        )
    per = len(cores) // instances
    return [cores[i * per : (i + 1) * per] for i in range(instances)]


def _worker(path: str, cores: list[int], device: str, jobs, results) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    model = load_runnable(path, device=device, threads=len(cores))
    results.put(("ready", None, None))
    with torch.inference_mode():
        while True:
            job = jobs.get()
            if job is None:
                break
            key, batch = job
            results.put(
                ("done", key, model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy())
            )


class Predictor:
    """Logits for raw texts from a model directory (PyTorch) or an exported artifact (``model.onnx``)."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        instances: int = 1,
        cores: list[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.record = ModelRecord.load(path)
        self.tokenizer = load_tokenizer(path)
        self.instances = instances
        self._pool: list[mp.Process] = []
        self._lean = None
        if instances <= 1:
            self.model = load_runnable(path, device=device, threads=threads)
            self._lean = self._lean_path()
        else:
            ctx = mp.get_context("spawn")
            self._jobs, self._results = ctx.Queue(), ctx.Queue()
            for cs in core_sets(instances, cores):
                p = ctx.Process(target=_worker, args=(str(path), cs, device, self._jobs, self._results), daemon=True)
                p.start()
                self._pool.append(p)
            for _ in self._pool:
                self._receive(timeout=600)

    def _lean_path(self):
        """The lean batch-1 path over this predictor's own session, where it serves the artifact (ONNX, a fast
        tokenizer with its tokenizer.json, not question answering); None elsewhere."""
        from axformer.runtime.backends import OnnxModel
        from axformer.runtime.lean import LeanSession

        if not isinstance(self.model, OnnxModel) or self.is_qa:
            return None
        if not getattr(self.tokenizer, "is_fast", False) or not (self.path / "tokenizer.json").is_file():
            return None
        return LeanSession(self.path, session=self.model.session)

    def _one_request(self, texts: Texts) -> np.ndarray | None:
        """The logits (or embedding) row of a single request through the lean path, as a batch of one; None when
        the batch path must serve it (several requests, no lean path, an embedder's pair: two texts)."""
        if self._lean is None or len(texts) != 1:
            return None
        request = texts[0]
        if not isinstance(request, str):
            if self.is_embedding or len(request) not in (1, 2):
                return None
            request = request[0] if len(request) == 1 else (request[0], request[1])
        return self._lean(request)[None, :].astype(np.float32, copy=False)

    @property
    def max_length(self) -> int:
        return max_input_length(self.path)

    @property
    def is_embedding(self) -> bool:
        """An embedding model (its record says so, or a sentence-transformers directory without a task head):
        texts give embeddings, pairs their cosine."""
        if self.record.task is not None:
            return bool((self.record.task.get("extra") or {}).get("embedding"))
        return is_embedding_model(str(self.path))

    def tokenize(self, texts: Texts) -> Encoded:
        """Token ids as in training: pairs together (a classifier), or text by text (an embedding model)."""
        return encode(self.tokenizer, _as_split(texts), self.max_length, separate=self.is_embedding)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings of ``texts``, in their order (pooled and, where the model says so, normalised):
        what ``SentenceTransformer.encode`` returns for the model this artifact came from."""
        if not self.is_embedding:
            raise AxformerError(f"{self.path} is not an embedding model; expected one exported with --embedding")
        if any(not isinstance(t, str) for t in texts):
            raise AxformerError("encode takes single texts; score pairs with predict([(a, b), ...])")
        one = self._one_request(texts)
        return one if one is not None else self.predict_encoded(self.tokenize(list(texts)), batch_size)

    @property
    def is_qa(self) -> bool:
        return (self.record.task or {}).get("extra", {}).get("problem") == "extractive-qa"

    def answer(
        self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 32
    ) -> list[tuple[str, float]]:
        """Extractive question answering: per question, the best answer span of its context over all the context's
        windows (the training's length and document stride) and its score (start + end logit), as transformers'
        QA post-processing picks it."""
        from axformer.data.batching import encode_questions
        from axformer.data.qa_windows import best_answers
        from axformer.tasks.qa_files import DOC_STRIDE

        if not self.is_qa:
            raise AxformerError(f"{self.path} is not a question answering model; expected one fine-tuned for QA")
        if len(questions) != len(contexts):
            raise AxformerError(f"{len(questions)} questions and {len(contexts)} contexts; expected one context each")
        stride = (self.record.task.get("extra") or {}).get("doc_stride", DOC_STRIDE)
        enc = encode_questions(self.tokenizer, list(questions), list(contexts), self.max_length, stride)
        logits = self.predict_encoded(enc, batch_size)
        return best_answers(enc, list(contexts), logits[..., 0], logits[..., 1])

    def batches(self, enc: Encoded, batch_size: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        return [
            (idx, {k: v.numpy() for k, v in collate(enc, idx, "cpu", with_labels=False).items()})
            for idx in sorted_batches(enc.lengths, batch_size)
        ]

    def predict_encoded(self, enc: Encoded, batch_size: int = 32) -> np.ndarray:
        parts = self.batches(enc, batch_size)
        outs = self.run_batches([b for _, b in parts])
        logits = None
        for (idx, _), out in zip(parts, outs):
            logits = store_logits(logits, idx, out, len(enc), int(enc.lengths.max()))
        return logits if logits is not None else np.zeros((0, 1), np.float32)

    def predict(self, texts: Texts, batch_size: int = 32) -> np.ndarray:
        """Logits in the order of ``texts`` (a text per example, or a pair of texts); an embedding model gives
        embeddings of texts and the cosine of each pair."""
        one = self._one_request(texts)
        return one if one is not None else self.predict_encoded(self.tokenize(texts), batch_size)

    @torch.inference_mode()
    def run_batches(self, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Run already padded batches; with several instances they are spread over the workers."""
        if not self._pool:
            dev = self.device
            return [
                self.model(**{k: torch.from_numpy(v).to(dev) for k, v in b.items()}).logits.float().cpu().numpy()
                for b in batches
            ]
        for i, b in enumerate(batches):
            self._jobs.put((i, b))
        out: list[np.ndarray | None] = [None] * len(batches)
        for _ in batches:
            _, key, logits = self._receive(timeout=600)
            out[key] = logits
        return out  # type: ignore[return-value]

    def _receive(self, timeout: float):
        """The next worker message; a worker that died (import error, out of memory) is an error, not a hang."""
        import queue

        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p for p in self._pool if not p.is_alive()]
                if dead or waited >= timeout:
                    self.close()
                    why = f"exited with status {dead[0].exitcode}" if dead else f"sent nothing for {timeout:.0f} s"
                    raise AxformerError(f"a predictor instance for {self.path} {why}") from None

    def close(self) -> None:
        for _ in self._pool:
            self._jobs.put(None)
        for p in self._pool:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        self._pool = []

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
