"""Trials: evaluate a candidate on top of the accepted state, decide, and log it, resumably.

Every trial gets a sequence number. The search is deterministic, so a re-run
(after a crash or a SIGKILL) asks for the same trials in the same order: those
already in ``search_log.jsonl`` are answered from the log (their decision and
losses) without evaluation, and the engine's base state is only rebuilt when
the first new trial needs it. A log written by a different run is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from axformer.errors import AxformerError
from axformer.evaluation.engine import CandidateResult, Change, EarlyStop
from axformer.search.certificate import Step
from axformer.utils.io import append_jsonl, read_jsonl


@dataclass
class Decision:
    trial: int
    stage: str
    candidate: str
    accepted: bool
    mean_loss: float  # lower bound when not complete
    metric: float | None
    complete: bool
    from_log: bool
    losses: np.ndarray | None = None  # per-example, for a fresh evaluation (not logged)


class Trials:
    def progress(self, total: int, description: str = "search") -> None:
        """Show a bar: trials done out of the search's upper bound (so its ETA is an upper bound too), with the
        accepted count and the best main metric so far."""
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=description, unit="trial", dynamic_ncols=True)
        self._best: float | None = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _tick(self, d: Decision) -> None:
        if self._bar is None:
            return
        if d.accepted and d.metric is not None:
            self._best = d.metric if self._best is None else d.metric
        accepted = sum(x.accepted for x in self.decisions)
        best = f"{self._best:.2f}" if self._best is not None else "-"
        self._bar.set_postfix_str(f"accepted {accepted}, {self.main_metric} now {best}", refresh=False)
        self._bar.update(1)

    def __init__(
        self,
        engine,
        log_path: str | Path | None,
        main_metric: str,
        on_accept: Callable[[Trials], None] | None = None,
        examples_sha256: str | None = None,
    ) -> None:
        self.engine = engine
        self.main_metric = main_metric
        self.log_path = Path(log_path) if log_path else None
        self.logged = read_jsonl(self.log_path, repair=True) if self.log_path else []
        self.count = 0
        self.removed: list[str] = []
        self.changes: list[Change] = []
        self._base_dirty = False
        self.decisions: list[Decision] = []
        self.on_accept = on_accept
        self._bar = None
        self.steps: list[Step] = []  # each accepted decision, in order (what backtracking undoes)
        self.examples_sha256 = examples_sha256  # fingerprint of the deciding examples, in every log row

    def accept(self, removed: Sequence[str] = (), changes: Sequence[Change] = ()) -> None:
        self.removed += list(removed)
        self.changes += list(changes)
        self.steps.append(Step(list(removed), list(changes)))
        self._base_dirty = True
        if self.on_accept is not None:
            self.on_accept(self)

    def state(self) -> dict:
        """The accepted state, as saved in ``best_so_far.json`` and the report."""
        return {"removed": list(self.removed), "attention": {str(c.layer): c.spec() for c in self.changes}}

    def sync_base(self) -> None:
        """Make the engine's base the accepted state (before anything that reads the current model)."""
        if self._base_dirty:
            self.engine.set_base(self.removed, self.changes)
            self._base_dirty = False

    def current_result(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-example losses and logits of the accepted state (one full evaluation, not a trial: nothing is
        logged)."""
        self.sync_base()
        result = self.engine.evaluate((), ())
        return result.losses, result.logits

    def run(
        self,
        stage: str,
        removed: Sequence[str] = (),
        changes: Sequence[Change] = (),
        rule=None,
        stop: EarlyStop | None = None,
        extra: dict | None = None,
    ) -> Decision:
        """Evaluate ``removed``/``changes`` on top of the accepted state and decide with ``rule.accepts``."""
        name = "+".join([*removed, *(c.key for c in changes)])
        n = self.count
        self.count += 1
        if n < len(self.logged):
            row = self.logged[n]
            if row["candidate"] != name or row["stage"] != stage:
                raise AxformerError(
                    f"search log {self.log_path} does not belong to this run (trial {n} is "
                    f"{row['candidate']!r}, expected {name!r}); use another --output or --overwrite"
                )
            d = Decision(n, stage, name, row["accepted"], row["mean_loss"], row.get("metric"), row["complete"], True)
            self.decisions.append(d)
            self._tick(d)
            return d
        self.sync_base()
        t0 = time.perf_counter()
        result: CandidateResult = self.engine.evaluate(removed, changes, stop=stop)
        accepted = bool(rule.accepts(result)) if rule is not None else False
        metric = result.metrics.get(self.main_metric) if result.complete else None
        d = Decision(n, stage, name, accepted, result.mean_loss, metric, result.complete, False, result.losses)
        if self.log_path:
            ref = self.engine.reference
            append_jsonl(
                self.log_path,
                {
                    "trial": n,
                    "stage": stage,
                    "candidate": name,
                    "accepted": accepted,
                    "complete": result.complete,
                    "evaluated": result.evaluated,
                    "mean_loss": result.mean_loss,
                    "delta_loss": result.mean_loss - ref.mean_loss,
                    "metric": metric,
                    "metrics": result.metrics,
                    "not_worse_fraction": float((result.losses <= ref.losses).mean()) if result.complete else None,
                    "start_layer": result.start_layer,
                    "examples_sha256": self.examples_sha256,
                    "seconds": time.perf_counter() - t0,
                    **(extra or {}),
                },
            )
        self.decisions.append(d)
        self._tick(d)
        return d
