"""The pipeline's configuration: one object, from presets, a YAML/TOML file and the command line, in that order.

Each stage has a section that *is* that stage's typed library config
(``FinetuneConfig``, ``AnalyzeConfig``, ``SearchStage`` = ``OptimizeConfig`` with
its ``tolerance``/``axformer``/``attention``/``recovery`` sub-sections plus the
FastFormers recipe's keys, ``ExportConfig``, ``BenchmarkConfig``), converted to
and from YAML/TOML by one function (``axformer.utils.config``), so whatever a
stage can do can be set from a file, and a setting has one name everywhere. The run writes the *resolved*
config (every field, defaults included) next to its results; running
``axformer optimize --config OUT/config.yaml`` reproduces it.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from axformer.analysis.analyze import AnalyzeConfig
from axformer.benchmark.run import BenchmarkConfig
from axformer.distill.ladder import StudentRung
from axformer.errors import AxformerError
from axformer.export.artifact import ExportConfig
from axformer.search.config import ArtifactFormat, OptimizeConfig, upgrade_flat_keys
from axformer.tasks.selection import TaskSelection
from axformer.training.finetune import FinetuneConfig
from axformer.utils.config import from_mapping, to_mapping

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
DEFAULT_SCORERS = ("gradient", "similarity")

PRESETS: dict[str, dict[str, Any]] = {
    "most-accurate": {"search": {"goal": "accuracy"}},
    # speed and size recover by distillation from the original over the whole training part (FastFormers), and
    # the certificate is the recovered model's; see docs/promises.md for the measurements behind it
    "fastest-within-1": {
        "search": {
            "goal": "speed",
            "tolerance": {"max_drop": 1.0},
            "recovery": {"mode": "distill"},
            "strategy": "auto",
        },
        "export": {"precision": "auto"},
    },
    # size counts the bytes of the artifact the export writes: int4 matrices rounded by GPTQ in blocks of 64 and
    # tables in blocks of 128, the vocabulary the fine-tuning texts use (tokens outside it share their nearest
    # kept neighbour's id) and positions up to the model's length. Chosen on held-out examples of the five GLUE
    # baselines (benchmarks/experiments/int4_mrpc/size_formats.md): of the formats reaching 10x, it changed the
    # fewest answers and moved the logits least on every task (against round-to-nearest in blocks of 32 with
    # tokens used twice, the previous default: MRPC 6.0% against 8.2% of answers changed, STS-B logit error
    # 0.059 against 0.155), at 10.0-12.2x with nothing removed.
    # The search removes structure only as far as the 10x target needs (--target-size none: as far as the
    # tolerance allows); the export falls back to mixed precision, then fp32, if the artifact breaks the promise
    "smallest-within-1": {
        "search": {
            "goal": "size",
            "tolerance": {"max_drop": 1.0},
            "recovery": {"mode": "distill"},
            "target_size": 10.0,
        },
        "export": {
            "precision": "int4",
            "embeddings": "int4",
            "int4_attention": True,
            "int4_block_size": 64,
            "int4_table_block_size": 128,
            "objective": "size",
            "vocabulary": {"prune": True, "trim_positions": True, "min_count": 1},
        },
    },
    # the embedded default: bundled MiniLM on BBC News, small enough to run end to end in minutes on 2 cores
    "demo": {
        "task": "bbcnews",
        # every training example, to convergence: an original fine-tuned on 480 examples at lr 1e-4 (held-out
        # loss 0.52 at 95.5% accuracy) has such small margins that removing any one layer changed 3% of its
        # answers; this one (loss ~0.1, dev 98%) is what a user would deploy, and what recovery distils from
        # A larger held-out split (30%) cut in halves: 267 examples decide and 267 certify. With 15% (107
        # confirmation examples, one example = 0.93 points) the certificate rejected a recovered model (its
        # structure, distilled the same way in benchmarks/experiments/recovery_bbc, was 0.22 points below the
        # original on dev) and shipped an unrecovered one 1.80 below on dev.
        # The first 64 tokens of each article (headline and lead): every stage costs half what it did at 128
        # (fine-tuning 128 s against 235 on the AMD EPYC), and the original is no worse for it (held-out 96.63
        # against 96.25, dev 98.20 against 97.30; docs/promises.md, run 10)
        "finetune": {
            "epochs": 2.0,
            "learning_rate": 2e-4,
            "batch_size": 16,
            "eval_max_examples": 300,
            "heldout_fraction": 0.3,
            "max_seq_length": 64,
        },
        "analyze": {"scorers": ["gradient", "similarity"], "max_examples": 300},
        "search": {
            "goal": "speed",
            "tolerance": {"max_drop": 1.0},
            # at 64 tokens two layers out measured 1.50x over ONNX Runtime int8 of the original in their int8, no
            # margin (the embeddings and the request's fixed costs weigh more in a shorter run), so the search goes
            # on to one FFN block: two layers predict 1.44x over PyTorch, with the FFN block 1.60x, and that int8
            # artifact measured 1.72-1.94x over ONNX Runtime int8 of the original on an AVX2 EPYC (docs/promises.md,
            # runs 10-11), but 1.47x on an EPYC with AVX-512 VNNI, whose int8 kernels gain more over PyTorch fp32
            # than the removed layers' share (run 12). At 1.85 the search goes on by one block more (four removals,
            # dev +0.00; 2.05x and 1.30x over ONNX Runtime int8 in two benchmark runs there, runs 13-14); with the
            # timing's pause before each model (session 21) it stopped at three (L4, L1, L2.attn): dev -0.67, 1.74x
            # over ONNX Runtime int8, 8.5 min (run 15)
            "target_speedup": 1.85,
            "max_examples": 300,
            "latency_examples": 60,
            "groups": 6,
            "attention": {"modes": []},
            # one pass over the training articles plus six later 64-token windows of each (the parts the model
            # never reads; the original's outputs are their targets): with four the recovered model lost 1.12
            # dev points, with six 0.22 (docs/promises.md, run 10)
            "recovery": {"mode": "distill", "epochs": 1.0, "learning_rate": 2e-4, "windows": 6},
            "certificate": {"fraction": 0.5},
        },
        "export": {"precision": "auto", "max_examples": 300},
        "benchmark": {
            # 2 rounds of 40 requests put the same artifact at 1.30x and 2.05x ONNX Runtime int8 of the original in
            # two demo runs; with a pause before each model's turn, 4 rounds measured 1.92-2.53x in three benchmark
            # runs of one artifact (docs/promises.md, "Timing on a shared machine"); about 30 s more
            "rounds": 4,
            "lengths": [],
            "latency_examples": 40,
            "throughput_examples": 128,
            "memory": False,
            "instances": 0,
            "breakdown_requests": 40,
        },
    },
}


STRATEGIES = ("search", "fastformers", "auto")
# --strategy auto sizes FastFormers' recipe by the training set: from this many examples a student with fewer
# layers (distillation has enough data to win a layer back), below it the model's own depth with fewer heads and
# a narrower FFN, distilled on perturbed copies of the training texts. Measured with MiniLM on the dev sets: on
# SST-2 (57k sentences) a five-layer student keeping every head and half the FFN kept the point (-0.46 at 1.57x
# ONNX Runtime int8 of the original, session 30); on MRPC (3.1k pairs) every student with fewer layers lost it
# (4 layers: -2.02 on the confirmation pairs, session 26; the recipe's 3-layer student -3.53 dev F1, run 9)
# while six layers with 8 of 12 heads and half the FFN, distilled on four perturbed copies per pair for three
# epochs, kept it (-0.71 at 1.42-1.61x in five benchmark runs, sessions 30-31), where the search with recovery
# removed nothing within the point on 3.7k pairs (~1.0x, session 27). Nothing between 8.5k (CoLA) and 57k was
# measured. Session 31 ran all five GLUE tasks with these defaults (docs/promises.md).
AUTO_FEWER_LAYERS_EXAMPLES = 20_000


@dataclass
class SearchStage(OptimizeConfig):
    """The pipeline's search stage: the search of ``axformer.optimize`` (``strategy: search``, every field of
    ``OptimizeConfig``) or FastFormers' recipe (``strategy: fastformers`` with its student and pruning sizes)."""

    # "auto": FastFormers' recipe sized by the training set (AUTO_FEWER_LAYERS_EXAMPLES), or the search where the
    # recipe cannot run (an embedding model, a model that records no held-out split); resolved once the task is
    # known (``resolve_strategy``)
    strategy: str = "search"
    student_layers: str | None = None
    # fastformers: minutes for the whole job; the recipe plans its distillations within what the stages before
    # it left, keeping back what the export and benchmark will need (axformer.distill.budget)
    time_budget: float | None = None
    heads: int | None = None
    ffn: int | None = None
    budget: str = "uniform"
    # fastformers: smaller students tried first, smallest first (axformer.distill.ladder); the first within the
    # export's --max-drop on the deciding examples whose artifact passes the certificate's check is the model.
    # None: auto's default (half the layers, see resolve_strategy), none for an explicit recipe
    try_students: list[StudentRung] | None = None

    def validate(self) -> None:
        super().validate()
        for rung in self.try_students or []:
            rung.validate()
        if self.try_students and self.strategy == "search":
            raise AxformerError(
                "--try-student sizes the FastFormers recipe's students; use it with --strategy fastformers or auto"
            )
        if self.strategy not in STRATEGIES:
            raise AxformerError(f"search.strategy {self.strategy!r}; expected {', '.join(STRATEGIES)}")
        if self.strategy == "auto":
            return  # validated once resolved
        if self.time_budget is not None and self.strategy != "fastformers":
            raise AxformerError(
                f"--time-budget {self.time_budget:g} plans the FastFormers recipe's distillations; use it with "
                "--strategy fastformers"
            )
        if self.strategy == "fastformers" and self.recovery.max_minutes is not None:
            raise AxformerError(
                f"--recover-max-minutes {self.recovery.max_minutes:g} bounds the search's recovery; the FastFormers "
                "recipe plans its distillations with --time-budget"
            )
        if self.strategy == "fastformers":
            self.recipe().validate()
        else:
            self.optimize_config().validate()

    def resolve_strategy(
        self, train_examples: int, model_config, embedding: bool = False, recorded_split: bool = True
    ) -> None:
        """``auto`` becomes the recipe or the search for this task and model, in place (the written config says
        which, so a re-run resolves to the same). Every size the user gave stays; the rest:

        - from AUTO_FEWER_LAYERS_EXAMPLES training examples: five sixths of the layers, every head, half the FFN
          neurons. Each smaller student measured on SST-2 (MiniLM, decisions on held-out sentences) broke the
          point on dev: half the layers lost 1.26 before any pruning (session 18), two thirds of the layers with
          two thirds of the heads and half the FFN 1.49 and 1.61 (sessions 19-20), five sixths with two thirds of
          the heads 1.15 (session 27); five sixths with every head kept -0.46 at 1.57x ONNX Runtime int8 of the
          original (session 30).
        - below: every layer, two thirds of the heads, half the FFN neurons, and four perturbed copies of every
          training text as extra distillation inputs (``--recover-augment``, the original's outputs as targets).
          A small task has too little text to win a layer back (MRPC, sessions 26-27), and too little for the
          distillation alone: MRPC's 6-layer 8-head 768-neuron model kept dev F1 within the point (-0.71) with
          the copies, where 512 neurons lost 1.44 (session 29).

        Both, when no size was given: a student of half the layers tried first (``try_students``), kept when it
        holds on the deciding examples and its artifact passes the certificate's check.

        Both: three epochs per distillation, planned within 55 minutes (issue: the job under an hour). Those dev
        figures chose the defaults, not a model: every model the recipe makes is judged by its certificate on
        the confirmation examples, and backtracks (student before pruning, then the original) when it fails."""
        if self.strategy != "auto":
            return
        # an embedding model is compressed as it is, with no held-out split of a fine-tuning to distil under, and
        # its decisions (fidelity on --calibration-texts) are the search's: the search, with --student-layers; a
        # classifier axformer did not fine-tune has no recorded split the recipe could keep its decisions off
        if embedding or not recorded_split:
            self.strategy = "search"
            return
        sizes = [
            next((getattr(model_config, a) for a in names if isinstance(getattr(model_config, a, None), int)), None)
            for names in (
                ("num_hidden_layers", "n_layers"),
                ("num_attention_heads", "n_heads"),
                ("intermediate_size", "hidden_dim"),
            )
        ]
        if None in sizes:
            raise AxformerError(
                f"--strategy auto: the {type(model_config).__name__} names no layer, head or FFN count; expected "
                "--strategy fastformers with --student-layers/--heads/--ffn, or --strategy search"
            )
        layers, heads, ffn = sizes
        large = train_examples >= AUTO_FEWER_LAYERS_EXAMPLES
        self.strategy = "fastformers"
        if self.student_layers is None and self.heads is None and self.ffn is None:
            if large:
                self.student_layers = str(max(1, round(layers * 5 / 6)))
                self.heads = heads
            else:
                self.heads = max(1, round(heads * 2 / 3))
            self.ffn = max(1, ffn // 2)
            if self.try_students is None:
                # half the layers, every head and neuron, tried before the student above: STS-B's three-layer
                # student kept its Pearson at 2.12x ONNX Runtime int8 of the original (session 26, trained so: lr
                # 3e-4, the gold scores beside the teacher's, four perturbed copies of every pair), where MRPC's lost
                # 2.6-4.4 F1 on dev and SST-2's 1.26 accuracy (sessions 18, 26): the size that holds is the task's,
                # so it is tried, judged, and given up for the one above when it does not hold. The plan drops it
                # where the two do not fit the budget together (SST-2's own student takes most of its 55 minutes).
                # Session 33: STS-B kept it (dev -0.52 at 1.97x ONNX Runtime int8, 18.2 min), MRPC refused it on
                # its deciding pairs (-2.21) and shipped its own six-layer model (dev -0.71, 32.2 min)
                half = max(1, round(layers / 2))
                ours = int(self.student_layers) if self.student_layers else layers  # a count, set just above
                self.try_students = (
                    [StudentRung(layers=str(half), learning_rate=3e-4, hard_weight=1.0)] if half < ours else []
                )
        if self.recovery.augment is None:
            self.recovery.augment = 0 if large else 4
        if self.recovery.epochs is None:
            self.recovery.epochs = 3.0
        if self.time_budget is None:
            self.time_budget = 55.0

    def optimize_config(self) -> OptimizeConfig:
        cfg = OptimizeConfig(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(OptimizeConfig)})
        if self.strategy == "search" and self.student_layers is not None:  # the search, then a distilled student
            cfg.recovery.student_layers = self.student_layers
        return cfg

    def recipe(self):
        from axformer.distill import DistillConfig
        from axformer.distill.recipe import RecipeConfig
        from axformer.search.recovery import rounding

        r = self.recovery
        distill = DistillConfig(
            epochs=r.epochs if r.epochs is not None else DistillConfig.epochs,
            learning_rate=r.learning_rate,
            max_train_examples=r.max_train_examples,
            device=self.device,
            precision=r.precision,
            allow_pickle=self.allow_pickle,
            # the recipe's distillations take the recovery's extra inputs (question answering takes none)
            windows=r.windows,
            augment=r.augment or 0,
            augment_min_words=r.augment_min_words,
            augment_words=r.augment_words,
        )
        return RecipeConfig(
            student_layers=self.student_layers,
            heads=self.heads,
            ffn=self.ffn,
            budget=self.budget,
            importance_examples=self.max_examples,
            export=None,
            distill=distill,
            time_budget=self.time_budget,
            qat_int8=bool(rounding(self, recipe=True).get("qat_int8")),
            trials=copy.deepcopy(self.try_students or []),
        )


SECTION_TYPES = {
    "finetune": FinetuneConfig,
    "analyze": AnalyzeConfig,
    "search": SearchStage,
    "export": ExportConfig,
    "benchmark": BenchmarkConfig,
}
NOT_WRITTEN = ("progress",)  # run-time switches, not part of what a config reproduces


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
    embedding: bool = False  # a sentence-transformers model: pairs scored by the cosine of their embeddings
    doc_stride: int | None = None  # question answering: overlap of the context windows
    output: str | None = None
    preset: str | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    analyze: AnalyzeConfig = field(default_factory=lambda: AnalyzeConfig(scorers=DEFAULT_SCORERS))
    search: SearchStage = field(default_factory=SearchStage)
    export: ExportConfig = field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    @classmethod
    def build(
        cls, file: str | os.PathLike | None = None, preset: str | None = None, overrides: dict | None = None
    ) -> PipelineConfig:
        """defaults <- preset <- file <- overrides (the command line); every section becomes its typed config."""
        merged: dict[str, Any] = {}
        from_file = load_file(file) if file is not None else {}
        name = preset or (overrides or {}).get("preset") or from_file.get("preset")
        if name is not None:
            if name not in PRESETS:
                raise AxformerError(f"--preset {name!r}; expected one of {', '.join(PRESETS)}")
            _merge(merged, copy.deepcopy(PRESETS[name]))
            merged["preset"] = name
        if isinstance(from_file.get("search"), dict):  # a config written before the search's sub-configs
            from_file = {**from_file, "search": upgrade_flat_keys(from_file["search"])}
        _merge(merged, from_file)
        _merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(merged)

    @classmethod
    def from_dict(cls, values: dict) -> PipelineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AxformerError(
                f"unknown config key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        values = dict(values)
        search = values.get("search")
        if isinstance(search, dict):
            search = upgrade_flat_keys(search)
            tolerance = search.get("tolerance")
            # a relative tolerance given alone is the only one (max_drop's 1.0 is a default, not a choice)
            if (
                isinstance(tolerance, dict)
                and tolerance.get("max_rel_drop") is not None
                and "max_drop" not in tolerance
            ):
                search["tolerance"] = {**tolerance, "max_drop": None}
            values["search"] = search
        if isinstance(values.get("benchmark"), dict):  # retired: the baselines are exported unchecked
            values["benchmark"] = {k: v for k, v in values["benchmark"].items() if k != "max_drop_for_baseline_exports"}
        analyze = values.get("analyze")
        if isinstance(analyze, dict) and "scorers" not in analyze:
            # the analysis feeds the report (and mixed precision); by default the scores that cost minutes
            values["analyze"] = {**analyze, "scorers": list(DEFAULT_SCORERS)}
        for section, kind in SECTION_TYPES.items():
            if section in values:
                values[section] = from_mapping(kind, values[section], section)
        cfg = cls(**values)
        # the size search counts the bytes of the artifact this export will write; a quantization-aware
        # distillation rounds as it will (unset: the recipe's last distillation does, for an int8 artifact)
        if cfg.search.goal == "size" or cfg.search.recovery.quantization_aware is not False:
            cfg.search.artifact = artifact_format(cfg.export)
        for section in SECTION_TYPES:
            getattr(cfg, section).validate()
        return cfg

    def selection(self) -> TaskSelection:
        """The task options of this config (all unset: the task recorded with the model)."""
        values = {k: getattr(self, k) for k in TaskSelection.option_names()}
        if values["text_column"] is not None:
            values["text_column"] = tuple(values["text_column"])
        return TaskSelection(**values)

    def stage_config(self, stage: str):
        """A copy of a stage's typed config (the search stage: the ``OptimizeConfig`` part)."""
        if stage == "search":
            return self.search.optimize_config()
        if stage in SECTION_TYPES:
            return copy.deepcopy(getattr(self, stage))
        raise AxformerError(f"stage {stage!r} has no config")

    def to_dict(self) -> dict:
        return {
            k: (
                to_mapping(v, drop=NOT_WRITTEN) if k in SECTION_TYPES else list(v) if isinstance(v, tuple | list) else v
            )
            for k, v in ((f.name, getattr(self, f.name)) for f in fields(self))
        }

    def dump(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def artifact_format(export: ExportConfig) -> ArtifactFormat:
    """What an export section will write, as the size search counts it (mixed and auto: int8, their floor)."""
    return ArtifactFormat(
        matrices=export.precision if export.precision in ("fp32", "int8", "int4") else "int8",
        embeddings=export.embeddings,
        block_size=export.int4_block_size,
        table_block_size=export.int4_table_block_size,
        int4_attention=export.int4_attention,
        prune_vocabulary=export.vocabulary.prune,
        vocabulary_min_count=export.vocabulary.min_count,
        trim_positions=export.vocabulary.trim_positions,
    )


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


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
