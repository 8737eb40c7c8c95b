"""The search's report as typed objects: what ``report.json`` holds, read and written by one converter.

``report.json`` keeps its layout (a model's dev splits sit beside ``heldout`` in its entry), so reports
written earlier still read; the writers (``report.md``, the pipeline's page) work on these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axformer.benchmark.result import Scores
from axformer.search.certificate import Certification
from axformer.utils.config import from_mapping, to_mapping

ENTRY_KEYS = ("heldout", "confirmation", "parameters", "flops_per_token", "structure", "size_bytes", "latency")


@dataclass
class TaskInfo:
    name: str
    display_name: str
    main_metric: str


@dataclass
class Latency:
    batch1_ms: float
    batch32_ms_per_example: float


@dataclass
class ModelResult:
    heldout: Scores
    dev: dict[str, Scores]  # per dev split (MNLI has two)
    parameters: int
    flops_per_token: int
    structure: list[dict]
    size_bytes: int | None = None
    latency: Latency | None = None
    confirmation: Scores | None = None  # on the held-out examples no decision used


@dataclass
class SearchSummary:
    """How the search went: its rule, trials and (constraint goals) thresholds and cost model."""

    rule: str = ""
    trials: int = 0
    accepted: int = 0
    from_log: int = 0
    seconds: float = 0.0
    seconds_this_run: float = 0.0
    resumed: bool = False
    min_loss: float | None = None  # accuracy goal
    hard_attention_supported: bool | None = None
    threshold: float | None = None  # constraint goals: of the main metric
    thresholds: dict[str, float] = field(default_factory=dict)  # every guarded metric
    max_loss: float | None = None
    cost_model: dict | None = None
    predicted_ratio: float | None = None
    target: float | None = None
    target_met: bool | None = None
    attention_notes: list[str] = field(default_factory=list)
    units: str | None = None  # constraint goals: "all" or "coarse" (layers and blocks only)


@dataclass
class SearchReport:
    model: str
    task: TaskInfo
    goal: str
    config: dict  # the OptimizeConfig of the run, as a mapping
    split: dict
    removed: list[str]
    attention: dict[str, dict]
    search: SearchSummary
    results: dict[str, ModelResult]  # "original" and "optimized"
    speedup_batch1: float
    speedup_batch32: float
    total_seconds: float
    warnings: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    recovery: dict | None = None
    certification: Certification | None = None
    fidelity: dict | None = None  # agreement with the original on unlabelled texts (training sample, calibration)

    @property
    def original(self) -> ModelResult:
        return self.results["original"]

    @property
    def optimized(self) -> ModelResult:
        return self.results["optimized"]

    @classmethod
    def from_dict(cls, values: dict) -> SearchReport:
        values = dict(values)
        values["results"] = {
            name: {**{k: v for k, v in entry.items() if k in ENTRY_KEYS},
                   "dev": {k: v for k, v in entry.items() if k not in ENTRY_KEYS}}
            for name, entry in values["results"].items()
        }  # fmt: skip
        return from_mapping(cls, values, "report.json")

    def to_dict(self) -> dict:
        out = to_mapping(self)
        for entry in out["results"].values():
            entry.update(entry.pop("dev"))
        for optional in ("recovery", "certification", "fidelity"):
            if out[optional] is None:
                del out[optional]
        for entry in out["results"].values():
            if entry.get("confirmation") is None:
                entry.pop("confirmation", None)
        return out
