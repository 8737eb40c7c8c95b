"""The evaluation engine shared by significance analysis and the search.

Scoring one candidate means one pass over the held-out split; the search makes
hundreds of them, so on a 2-core CPU this loop decides whether axformer is
usable. The engine makes each pass as cheap as exactness allows:

* the held-out split is tokenised once and cut into length-sorted batches,
  each padded only to its longest member;
* the hidden states entering every layer are computed once for the current
  *base* model (the accepted changes so far) and kept, so a candidate that
  changes layer ``i`` and above re-runs only those layers: the layers below are
  swapped for stand-ins that do nothing, and a pre-hook on layer ``i`` feeds it
  the cached input. The model's own code runs everything else (embeddings,
  masks, position biases, pooler, head), so any supported family works;
* a candidate's pass stops early once an acceptance rule says it can no
  longer pass (``EarlyStop``);
* everything runs under ``torch.inference_mode``.

Candidates are soft masks (``removed`` component names) plus optional
``Change`` objects (fake-quantised weights, approximate attention) that know
their layer and apply themselves reversibly. Tested: every loss equals a plain
full forward pass of the same masked model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from axformer.data.batching import Encoded, collate, sorted_batches
from axformer.evaluation.squad_metrics import answer_metrics
from axformer.inference import per_example_loss, predictions, store_logits
from axformer.surgery.adapters import Adapter, get_adapter
from axformer.surgery.components import parse
from axformer.surgery.masks import SoftMask
from axformer.tasks.metrics import compute_metrics
from axformer.tasks.spec import TaskSpec


class Change(Protocol):
    """A reversible modification of one layer (e.g. fake-quantised weights, approximate attention)."""

    layer: int  # original layer index
    key: str  # stable name, used in logs and to compare states

    def applied(self, model: PreTrainedModel, adapter: Adapter) -> AbstractContextManager: ...


@dataclass
class PartialResult:
    """What an early-stop rule sees after each batch: values are filled where ``done`` is true."""

    done: np.ndarray
    losses: np.ndarray
    logits: np.ndarray


class EarlyStop(Protocol):
    def hopeless(self, partial: PartialResult) -> bool:
        """True once the candidate cannot pass whatever the remaining examples give."""


@dataclass
class CandidateResult:
    removed: tuple[str, ...]
    changes: tuple[str, ...]
    losses: np.ndarray  # per example (partial when not complete)
    logits: np.ndarray
    complete: bool
    evaluated: int  # examples evaluated
    start_layer: int  # module position the pass started from (0: the whole encoder)
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def mean_loss(self) -> float:
        """Mean per-example loss; for an incomplete pass, a lower bound (losses are >= 0)."""
        return float(self.losses.sum() / len(self.losses))

    def predictions(self, regression: bool) -> np.ndarray:
        return predictions(self.logits, regression)


class _Stop(Exception):
    pass


class _Skip(nn.Module):
    """Stands in for a layer below the changed ones: returns its input in the layer's output format."""

    def __init__(self, original: nn.Module, template, adapter: Adapter) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)  # not a submodule: attributes only (e.g. attention_type)
        self.template = template
        self.adapter = adapter

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)

    def forward(self, hidden_states=None, *args, **kwargs):
        return self.adapter.replace_layer_output(self.template, hidden_states)


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class EvaluationEngine:
    """Scores candidate changes of ``model`` on one tokenised split (normally the held-out split)."""

    def __init__(
        self,
        model: PreTrainedModel,
        encoded: Encoded,
        spec: TaskSpec,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        prefix_cache: bool = True,
        cache_budget_bytes: int = 2 << 30,
        progress: bool = False,
    ) -> None:
        self.model = model.eval()
        self.adapter = get_adapter(model)
        self.encoded = encoded
        self.spec = spec
        self.regression = spec.is_regression
        self.device = torch.device(device)
        self.prefix_cache = prefix_cache
        self.progress = progress
        self.mask = SoftMask(model, self.adapter)
        self.structure = self.mask.structure
        self.positions = {orig: pos for pos, orig in enumerate(self.structure.present_layers)}
        self.num_positions = len(self.positions)
        self.batches = sorted_batches(encoded.lengths, batch_size)
        self._inputs = [collate(encoded, idx, self.device) for idx in self.batches]
        self._labels = [b.pop("labels") for b in self._inputs]
        self.n = len(encoded)
        self.base_removed: tuple[str, ...] = ()
        self.base_changes: tuple[Change, ...] = ()
        self._base_stack = ExitStack()
        self._cache: dict[int, list[torch.Tensor]] = {}  # position -> per batch, the base model's input to that layer
        self._valid: set[int] = set()
        self._templates: list = []
        tokens = sum(int(b["input_ids"].numel()) for b in self._inputs)
        per_layer = tokens * self.structure.hidden * next(model.parameters()).element_size()
        budget_layers = max(1, cache_budget_bytes // max(per_layer, 1))
        every = max(1, int(np.ceil(self.num_positions / budget_layers)))
        self.cached_positions = sorted({0, *range(0, self.num_positions, every)}) if prefix_cache else [0]
        self.passes = 0
        self.layer_runs = 0  # layers executed over all passes, per batch (a cost measure)
        self.reference = self.evaluate()

    # ------------------------------------------------------------------ base state

    def set_base(self, removed: Sequence[str] = (), changes: Sequence[Change] = ()) -> CandidateResult:
        """Make ``removed`` + ``changes`` the state every candidate builds on (the search's accepted model)."""
        removed, changes = tuple(removed), tuple(changes)
        changed_keys = {c.key for c in changes} ^ {c.key for c in self.base_changes}
        touched = self._layers_touched(
            set(removed) ^ set(self.base_removed), changed_keys, (*changes, *self.base_changes)
        )
        self._base_stack.close()
        self._base_stack = ExitStack()
        for c in changes:
            self._base_stack.enter_context(c.applied(self.model, self.adapter))
        self.base_removed, self.base_changes = removed, changes
        if touched:
            first = min(touched)
            self._valid = {p for p in self._valid if p <= first}
        return self.evaluate()

    def _layers_touched(self, components, change_keys, changes) -> set[int]:
        """Module positions whose computation differs (removed layers count from where they were)."""
        origs = {parse(c).layer for c in components} | {c.layer for c in changes if c.key in change_keys}
        out = set()
        for orig in origs:
            later = [p for o, p in self.positions.items() if o >= orig]
            if later:
                out.add(min(later))
        return out

    def close(self) -> None:
        self._base_stack.close()
        self.mask.remove()

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        removed: Sequence[str] = (),
        changes: Sequence[Change] = (),
        stop: EarlyStop | None = None,
        desc: str | None = None,
    ) -> CandidateResult:
        """Losses and logits of the base model with ``removed`` switched off and ``changes`` applied on top."""
        removed, changes = tuple(removed), tuple(changes)
        t0 = time.perf_counter()
        touched = self._layers_touched(removed, {c.key for c in changes}, changes)
        first = min(touched) if touched else self.num_positions
        start = max(p for p in self.cached_positions if p <= first) if self.prefix_cache else 0
        start = min(start, self.num_positions - 1) if self.num_positions else 0
        if start > 0:
            self._ensure_cache(start)
        losses = np.zeros(self.n, dtype=np.float32)
        logits: np.ndarray | None = None
        done = np.zeros(self.n, dtype=bool)
        complete = True
        with torch.inference_mode(), ExitStack() as stack:
            self.mask.set((*self.base_removed, *removed))
            for c in changes:
                stack.enter_context(c.applied(self.model, self.adapter))
            for b, idx in enumerate(tqdm(self.batches, desc=desc, disable=not (self.progress and desc), leave=False)):
                out = self._pass(b, start)
                width = int(self.encoded.lengths.max())
                logits = store_logits(logits, idx, out.float().cpu().numpy(), self.n, width)
                losses[idx] = per_example_loss(out, self._labels[b], self.regression).cpu().numpy()
                done[idx] = True
                if (
                    stop is not None
                    and b + 1 < len(self.batches)
                    and stop.hopeless(PartialResult(done, losses, logits))
                ):
                    complete = False
                    break
            self.mask.set(self.base_removed)
        result = CandidateResult(
            removed,
            tuple(c.key for c in changes),
            losses,
            logits if logits is not None else np.zeros((self.n, 1), np.float32),
            complete,
            int(done.sum()),
            start,
            time.perf_counter() - t0,
        )
        if complete:
            result.metrics = (
                answer_metrics(self.encoded, result.logits)
                if self.spec.is_qa
                else compute_metrics(self.spec.metrics, self.encoded.labels, result.predictions(self.regression))
            )
        self.passes += 1
        return result

    # ------------------------------------------------------------------ passes

    def _ensure_cache(self, position: int) -> None:
        """Make the base model's inputs to ``position`` available, running only the layers that are missing."""
        if position in self._valid:
            return
        below = [p for p in self._valid if p < position]
        start = max(below) if below else 0
        want = [p for p in self.cached_positions if start < p <= position]
        with torch.inference_mode():
            self.mask.set(self.base_removed)
            for b in range(len(self.batches)):
                self._pass(b, start, record=want, stop_at=position)
        self._valid.update(want)

    def _pass(self, b: int, start: int, record: Sequence[int] = (), stop_at: int | None = None) -> torch.Tensor | None:
        """One batch through the model, from module position ``start``; records inputs of ``record`` positions."""
        layers = self.adapter.layers(self.model)
        originals = list(layers)
        handles = []
        need_templates = not self._templates
        if start == 0 and 0 not in self._valid or need_templates:
            record = sorted({*record, 0}) if self.prefix_cache else record
        try:
            if start > 0:
                for j in range(start):
                    layers[j] = _Skip(originals[j], self._templates[j], self.adapter)
                cached = self._cache[start][b]
                handles.append(
                    originals[start].register_forward_pre_hook(
                        lambda m, a, k: _with_hidden(a, k, cached), with_kwargs=True
                    )
                )
            for p in record:
                handles.append(originals[p].register_forward_pre_hook(self._recorder(p, b), with_kwargs=True))
            if need_templates:
                for p, module in enumerate(originals):
                    handles.append(module.register_forward_hook(self._template_hook(p)))
            if stop_at is not None:
                handles.append(originals[stop_at].register_forward_pre_hook(self._stopper, with_kwargs=True))
            try:
                out = self.model(**self._inputs[b]).logits
            except _Stop:
                return None
            self.layer_runs += self.num_positions - start
            return out
        finally:
            for h in handles:
                h.remove()
            for j in range(start):
                layers[j] = originals[j]
            if stop_at is not None:
                self.layer_runs += stop_at - start

    def _recorder(self, position: int, b: int):
        def hook(module, args, kwargs):
            store = self._cache.setdefault(position, [None] * len(self.batches))
            store[b] = _hidden_arg(args, kwargs).detach()
            if b == len(self.batches) - 1:
                self._valid.add(position)

        return hook

    def _template_hook(self, position: int):
        def hook(module, args, output):
            if len(self._templates) == position:
                self._templates.append(output)

        return hook

    @staticmethod
    def _stopper(module, args, kwargs):
        raise _Stop
