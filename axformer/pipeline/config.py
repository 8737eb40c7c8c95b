"""The pipeline's configuration: one object, from presets, a YAML/TOML file and the command line, in that order.

Each stage has a section whose keys are exactly the fields of that stage's
library config (``FinetuneConfig``, ``AnalyzeConfig``, ``OptimizeConfig`` plus
the FastFormers recipe's keys, ``ExportConfig``, ``BenchmarkConfig``), so
whatever a stage can do can be set from a file. The run writes the *resolved*
config (every field, defaults included) next to its results; running
``axformer optimize --config OUT/config.yaml`` reproduces it.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from axformer.errors import AxformerError
from axformer.tasks.selection import TaskSelection

STAGES = ("finetune", "analyze", "search", "export", "benchmark", "report")
# each stage's directory under the output, and the file whose presence says the stage finished
DIRS = {
    "finetune": "1-finetuned",
    "analyze": "2-analysis",
    "search": "3-search",
    "export": "4-export",
    "benchmark": "5-benchmark",
}
MARKERS = {
    "finetune": "metrics.json",
    "analyze": "significance.json",
    "search": "report.json",
    "export": "export.json",
    "benchmark": "benchmark.json",
}
SECTIONS = ("finetune", "analyze", "search", "export", "benchmark")
DEFAULT_SCORERS = ("gradient", "similarity")
RECIPE_KEYS = ("strategy", "student_layers", "heads", "ffn", "budget")

PRESETS: dict[str, dict[str, Any]] = {
    "most-accurate": {"search": {"goal": "accuracy"}},
    "fastest-within-1": {
        "search": {"goal": "speed", "max_drop": 1.0, "refinetune": "continue"},
        "export": {"precision": "auto"},
    },
    "smallest-within-1": {
        "search": {"goal": "size", "max_drop": 1.0, "refinetune": "continue"},
        "export": {"precision": "int8"},
    },
    # the embedded default: bundled MiniLM on BBC News, small enough to run end to end in minutes on 2 cores
    "demo": {
        "task": "bbcnews",
        "finetune": {
            "epochs": 2.0,
            "learning_rate": 1e-4,
            "batch_size": 16,
            "max_train_examples": 480,
            "eval_max_examples": 300,
        },
        "analyze": {"scorers": ["gradient", "similarity"], "max_examples": 300},
        "search": {
            "goal": "speed",
            "max_drop": 1.0,
            "target_speedup": 2.0,
            "max_examples": 300,
            "latency_examples": 60,
            "groups": 6,
            "attention_modes": [],
        },
        "export": {"precision": "auto", "max_examples": 300},
        "benchmark": {
            "rounds": 2,
            "lengths": [],
            "latency_examples": 40,
            "throughput_examples": 128,
            "memory": False,
            "instances": 0,
        },
    },
}


@dataclass
class PipelineConfig:
    model: str | None = None
    task: str | None = None  # task name, or "custom" with train/dev files
    data_dir: str | None = None
    source: str = "auto"
    train: str | None = None
    dev: str | None = None
    text_column: list[str] | None = None
    label_column: str = "label"
    problem: str = "classification"
    labels: str | None = None
    output: str | None = None
    preset: str | None = None
    finetune: dict = field(default_factory=dict)
    analyze: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    benchmark: dict = field(default_factory=dict)

    # ------------------------------------------------------------ building

    @classmethod
    def build(
        cls, file: str | os.PathLike | None = None, preset: str | None = None, overrides: dict | None = None
    ) -> PipelineConfig:
        """defaults <- preset <- file <- overrides (the command line); every stage section resolved to its full
        config.
        """
        merged: dict[str, Any] = {}
        from_file = load_file(file) if file is not None else {}
        name = preset or (overrides or {}).get("preset") or from_file.get("preset")
        if name is not None:
            if name not in PRESETS:
                raise AxformerError(f"--preset {name!r}; expected one of {', '.join(PRESETS)}")
            _merge(merged, copy.deepcopy(PRESETS[name]))
            merged["preset"] = name
        _merge(merged, from_file)
        _merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise AxformerError(
                f"unknown config key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        cfg = cls(**merged)
        cfg.resolve()
        return cfg

    def resolve(self) -> None:
        """Fill every section with its stage config's full set of fields, validating names and values."""
        from axformer.analysis.analyze import AnalyzeConfig
        from axformer.benchmark.run import BenchmarkConfig
        from axformer.export.artifact import ExportConfig
        from axformer.search.optimize import OptimizeConfig
        from axformer.training.finetune import FinetuneConfig

        self.finetune = _resolved("finetune", FinetuneConfig, self.finetune)
        # the analysis feeds the report (and mixed precision); by default the scores that cost minutes, not the full
        # ablation
        self.analyze = _resolved(
            "analyze", AnalyzeConfig, {"scorers": list(DEFAULT_SCORERS), **self.analyze}, drop=("progress",)
        )
        if self.search.get("max_rel_drop") is not None and "max_drop" not in self.search:
            self.search["max_drop"] = (
                None  # a relative tolerance given alone is the only one (max_drop's 1.0 is a default, not a choice)
            )
        recipe = {k: self.search.pop(k) for k in RECIPE_KEYS if k in self.search}
        self.search = _resolved("search", OptimizeConfig, self.search, drop=("progress", "extra")) | {
            "strategy": recipe.get("strategy", "search"),
            "student_layers": recipe.get("student_layers"),
            "heads": recipe.get("heads"),
            "ffn": recipe.get("ffn"),
            "budget": recipe.get("budget", "uniform"),
        }
        if self.search["strategy"] not in ("search", "fastformers"):
            raise AxformerError(f"search.strategy {self.search['strategy']!r}; expected search or fastformers")
        if self.search["strategy"] == "fastformers":
            from axformer.distill.recipe import RecipeConfig

            RecipeConfig(
                student_layers=self.search["student_layers"],
                heads=self.search["heads"],
                ffn=self.search["ffn"],
                budget=self.search["budget"],
                export=None,
            ).validate()
        self.export = _resolved("export", ExportConfig, self.export)
        self.benchmark = _resolved("benchmark", BenchmarkConfig, self.benchmark)
        if self.benchmark.get("lengths") is not None:
            self.benchmark["lengths"] = list(self.benchmark["lengths"])

    def selection(self) -> TaskSelection:
        """The task options of this config (all unset: the task recorded with the model)."""
        values = {k: getattr(self, k) for k in TaskSelection.option_names()}
        if values["text_column"] is not None:
            values["text_column"] = tuple(values["text_column"])
        return TaskSelection(**values)

    # ------------------------------------------------------------ stage configs

    def stage_config(self, stage: str):
        from axformer.analysis.analyze import AnalyzeConfig
        from axformer.benchmark.run import BenchmarkConfig
        from axformer.export.artifact import ExportConfig
        from axformer.search.optimize import OptimizeConfig
        from axformer.training.finetune import FinetuneConfig

        if stage == "finetune":
            return FinetuneConfig(**self.finetune)
        if stage == "analyze":
            return AnalyzeConfig(
                **{
                    **self.analyze,
                    "scorers": tuple(self.analyze["scorers"]),
                    "quant_bits": tuple(self.analyze["quant_bits"]),
                }
            )
        if stage == "search":
            return OptimizeConfig(**{k: v for k, v in self.search.items() if k not in RECIPE_KEYS})
        if stage == "export":
            return ExportConfig(**{**self.export, "int8_op_types": tuple(self.export["int8_op_types"])})
        if stage == "benchmark":
            return BenchmarkConfig(**{**self.benchmark, "lengths": tuple(self.benchmark["lengths"])})
        raise AxformerError(f"stage {stage!r} has no config")

    def to_dict(self) -> dict:
        return asdict(self)

    def dump(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _plain(v):
    """Tuples as lists, so the resolved config is plain YAML and reads back equal."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _resolved(section: str, cls, values: dict, drop: tuple[str, ...] = ()) -> dict:
    if not isinstance(values, dict):
        raise AxformerError(f"config section {section!r} must be a mapping of option names to values")
    names = [f.name for f in fields(cls) if f.name not in drop]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise AxformerError(
            f"unknown key(s) {', '.join(unknown)} in config section {section!r}; expected some of {', '.join(names)}"
        )
    try:
        obj = cls(**values)
    except TypeError as exc:
        raise AxformerError(f"config section {section!r}: {exc}") from None
    obj.validate()
    return {n: _plain(getattr(obj, n)) for n in names}


def load_file(path: str | os.PathLike) -> dict:
    """A YAML (.yaml/.yml) or TOML (.toml) config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise AxformerError(f"config file {path} does not exist; expected a YAML or TOML file")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise AxformerError(
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AxformerError(f"config file {path} must hold a mapping of option names to values")
    return data
