"""The search's settings: one typed object, with a sub-config per concern.

``OptimizeConfig`` is what ``axformer.optimize`` takes, what the pipeline's ``search`` section holds (nested
as ``tolerance:``, ``axformer:``, ``attention:``, ``recovery:``) and what ``axformer optimize``'s flags map to.
``from_dict`` also reads the flat keys of configs written before the sub-configs existed (``max_drop``,
``refinetune``, ``hard_attention``, ...), so an old ``config.yaml`` still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from axformer.attention.hard import MODES
from axformer.distill.augment import check_augment_words
from axformer.errors import AxformerError
from axformer.surgery.fake_quant import check_block_size
from axformer.utils.config import from_mapping, to_mapping
from axformer.utils.device import PRECISIONS

GOALS = ("accuracy", "speed", "size")
LATENCY_RUNTIMES = ("pytorch", "onnxruntime-int8")
UNITS = ("auto", "all", "coarse")
CERTIFICATE_RULES = ("estimate", "bound")
ACCURACY_RULES = ("paired", "axformer")
RECOVERY = ("continue", "pretrained", "distill")


@dataclass
class Tolerance:
    """How far the constraint goals (speed, size) may let the held-out metrics fall."""

    max_drop: float | None = 1.0  # points of every guarded metric
    max_rel_drop: float | None = None  # percent of every guarded metric
    guard: str = "all"  # the tolerance holds for every task metric ("all") or the main one ("main")
    max_loss_increase: float | None = None  # percent over the unpruned model's mean held-out loss

    def validate(self) -> None:
        if self.max_drop is not None and self.max_drop < 0:
            raise AxformerError(f"--max-drop {self.max_drop}; expected a non-negative number of points (e.g. 1)")
        if self.max_rel_drop is not None and not 0 <= self.max_rel_drop < 100:
            raise AxformerError(f"--max-rel-drop {self.max_rel_drop}; expected a percentage from 0 to below 100")
        if self.guard not in ("all", "main"):
            raise AxformerError(f"--guard {self.guard!r}; expected all or main")
        if self.max_loss_increase is not None and self.max_loss_increase < 0:
            raise AxformerError(f"--max-loss-increase {self.max_loss_increase}; expected a non-negative percentage")


@dataclass
class AxFormerRule:
    """The accuracy goal's constants (AxFormer's published values by default)."""

    slack: float = 1.1  # descend into a block's units when its loss is below slack x the best loss
    fraction: float = 0.5  # axformer rule: share of examples that must not get worse
    prune_layers: list[int] | None = None  # order of the pruning phase (default: last to first; []: skip)
    # "paired" (default): a change is kept only if its per-example loss improvement over the model it changes is
    # real and, for classification, it fixes more answers than it breaks (both paired, Bonferroni over the
    # trials; axformer.search.acceptance.PairedImprovement); "axformer": the published two-part test
    rule: str = "paired"
    alpha: float = 0.05

    def validate(self) -> None:
        if self.rule not in ACCURACY_RULES:
            raise AxformerError(f"--rule {self.rule!r}; expected one of {', '.join(ACCURACY_RULES)}")
        if not 0 < self.alpha < 1:
            raise AxformerError(f"--alpha {self.alpha}; expected a value between 0 and 1")
        if not 0 < self.fraction < 1:
            raise AxformerError(f"--fraction {self.fraction}; expected a value between 0 and 1")
        if self.slack < 1:
            raise AxformerError(f"--slack {self.slack}; expected a value of at least 1")


@dataclass
class AttentionSearch:
    """Approximate attention tried per layer. ``modes`` None: the goal's default (accuracy: topk, AxFormer's
    hard attention; speed: topk and sign, each only where measured faster than dense); []: none at all."""

    modes: list[str] | None = None
    k: int = 30
    layers: list[int] | None = None  # accuracy goal: layers and order of the attention phase (default: 0 .. L-1)

    def validate(self) -> None:
        if self.k < 1:
            raise AxformerError(f"-k {self.k}; expected a positive number of attended keys")
        if any(m not in MODES for m in self.modes or []):
            raise AxformerError(f"--attention {self.modes}; expected topk and/or sign, or none")

    def modes_for(self, goal: str) -> tuple[str, ...]:
        if self.modes is not None:
            return tuple(self.modes)
        return ("topk",) if goal == "accuracy" else MODES


@dataclass
class Recovery:
    """Training after the search (``--recover``): None; "continue" fine-tunes from the searched weights;
    "pretrained" (AxFormer) puts the structure on the pre-trained checkpoint and fine-tunes; "distill"
    (FastFormers) distils the original model into the searched one."""

    mode: str | None = None
    # distill: a student of these teacher layers ("3": spread evenly, first and last kept; "0,2,5": exactly
    # those), taken after the search as one more step of it: the searched removals in the kept layers stay, the
    # other layers go, and the distillation (on the training texts and --calibration-texts) must win it back.
    # The certificate judges it; if it fails, the searched model without the student is recovered instead
    student_layers: str | None = None
    # None: enough passes over the training part to see RECOVERY_EXAMPLES examples, from one to three epochs
    # (a small task gets three, SST-2 one); see ``axformer.search.recovery.recovery_epochs``
    epochs: float | None = None
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_train_examples: int | None = None
    # distill: later windows of long training texts, per text, as extra unlabelled inputs (axformer.distill.augment)
    windows: int = 2
    # distill: perturbed copies of every training text as extra unlabelled inputs (axformer.distill.augment);
    # None: none, except in the recipe --strategy auto chooses for a small task (four; pipeline.config)
    augment: int | None = None
    # distill: only training texts of at least this many words get perturbed copies (0: every text)
    augment_min_words: int = 0
    # distill: where a perturbed copy's replacement words come from (axformer.distill.augment.AUGMENT_WORDS)
    augment_words: str = "unigram"
    # distill into an int4 artifact (--artifact matrices or embeddings int4): round what the artifact stores in
    # int4 during the distillation (quantization-aware training, axformer.surgery.fake_quant), so that it wins back
    # the rounding too; an unpruned model is then distilled as well, since the rounding is something to win back.
    # Not for int4 by default: measured on STS-B it passed its certificate and lost 2.03 dev Pearson (post-training
    # int4: -0.54), on MRPC the certificate refused it (docs/size.md). Into an int8 artifact (fastest-within-1's):
    # every matrix product's weights and inputs rounded as dynamic int8 rounds them (fake_quant.int8_aware), in the
    # recovery or in the recipe's last distillation. None (the default): on in the FastFormers recipe's last
    # distillation into an int8 artifact, off elsewhere. Measured there (docs/promises.md, sessions 29-30): MRPC's
    # int8 passed its certificate (-0.27 on 222 pairs; trained in fp32 it was refused at -1.80) and kept dev F1
    # within the point (-0.71); SST-2's certificate +0.34 instead of -0.45 and dev -0.46 instead of -0.57, the
    # distillation 1.2-1.6x slower. The search's recovery with it (always distil, always keep) is not measured
    quantization_aware: bool | None = None
    # mixed precision of the recovery's training steps and teacher pass (axformer.utils.device.training_dtype)
    precision: str = "auto"
    # distill: weight of the task's own loss on the gold labels beside the distillation. None: 1 for an embedding
    # model with gold-scored pairs (half a batch of pairs beside every batch of texts; measured on STS-B, a 2-layer
    # student: dev Spearman 85.34 without, 87.43 with; axformer.distill.embedding), 0 otherwise (classification
    # distils on the original's outputs; a weight above 0 reads only the labelled rows, not the unlabelled inputs)
    hard_weight: float | None = None
    # minutes of training steps each recovery may spend (None: every planned step); at the limit it evaluates,
    # keeps its best checkpoint so far and stops. Why: a student refused by its certificate is followed by a second
    # recovery of the searched model without it, with the same settings, and the recipe's --time-budget plans
    # only the recipe (MRPC, session 26: the fallback distilled a 6-layer model on 52,712 inputs, ~40 minutes)
    max_minutes: float | None = None

    def distill_hard_weight(self, spec) -> float:
        if self.hard_weight is not None:
            return self.hard_weight
        return 1.0 if spec.has_gold_pairs else 0.0

    def check_for(self, spec, calibration_texts: bool) -> None:
        """Refuse, before anything runs, the gold-label loss ``axformer.distill.trainer.distill`` would refuse
        after the search: an embedding model's single texts without gold-scored pairs (``--task none``) have no
        gold label (a classifier's unlabelled inputs are only skipped by that loss)."""
        if self.mode != "distill" or not self.distill_hard_weight(spec) or not spec.is_embedding:
            return
        if not spec.has_gold_pairs and (self.windows or self.augment or calibration_texts):
            raise AxformerError(
                f"--recover-hard-weight {self.hard_weight} on {spec.name}, whose texts have no gold labels (their "
                "targets are the original's embeddings); expected --recover-hard-weight 0"
            )

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise AxformerError(f"--train-precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise AxformerError(f"--recover-max-minutes {self.max_minutes:g}; expected minutes above 0")
        if self.augment is not None and self.augment < 0:
            raise AxformerError(f"--recover-augment {self.augment}; expected a number of copies per text (0: none)")
        if self.augment_min_words < 0:
            raise AxformerError(
                f"--recover-augment-min-words {self.augment_min_words}; expected 0 (every text) or a number of words"
            )
        check_augment_words(self.augment_words, "--recover-augment-words")
        if self.windows < 0:
            raise AxformerError(f"--recover-windows {self.windows}; expected a number of windows per text (0: none)")
        if self.mode not in (None, *RECOVERY):
            raise AxformerError(f"--recover {self.mode!r}; expected one of {', '.join(RECOVERY)}")
        if self.student_layers is not None and self.mode != "distill":
            raise AxformerError(
                f"--student-layers {self.student_layers} is won back by distillation; expected --recover distill"
            )
        if self.hard_weight is not None and self.hard_weight < 0:
            raise AxformerError(f"--recover-hard-weight {self.hard_weight}; expected a weight >= 0")
        if self.epochs is not None and self.epochs <= 0:
            raise AxformerError(f"--recover-epochs {self.epochs}; expected a positive number of epochs")


@dataclass
class Certification:
    """The certificate (see ``axformer.search.certificate``): ``fraction`` of the held-out split is kept from
    every decision and judges the result; 0 turns it off (decisions and the promise on the same examples,
    as before). ``rule``: "estimate" (the measured drop is within the tolerance) or "bound" (its confidence
    bound is). A failing result is backtracked (accepted changes undone, latest first) until it passes."""

    fraction: float = 0.4
    max_examples: int | None = 2000
    rule: str = "estimate"
    resamples: int = 1000
    confidence: float = 0.95

    def validate(self) -> None:
        if not 0 <= self.fraction < 1:
            raise AxformerError(f"--confirm-fraction {self.fraction}; expected a value from 0 (off) to below 1")
        if self.rule not in CERTIFICATE_RULES:
            raise AxformerError(f"--certify {self.rule!r}; expected one of {', '.join(CERTIFICATE_RULES)}")
        if not 0.5 <= self.confidence < 1:
            raise AxformerError(f"certificate confidence {self.confidence}; expected a value from 0.5 to below 1")
        if self.resamples < 100:
            raise AxformerError(f"certificate resamples {self.resamples}; expected at least 100")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


EMBEDDING_POOL_TEXTS = 1000


@dataclass
class FidelityDecision:
    """Speed and size goals: every candidate is also judged on a pool of unlabelled inputs against the original
    (``texts`` training texts, sampled, plus ``--calibration-texts``).

    Classification: it must agree with the original's answers on at least 100 - tolerance percent of them (a
    model cannot lose more accuracy than the share of answers it changes); 0 texts: off.
    Embedding models (always on; 0 texts means ``EMBEDDING_POOL_TEXTS``): the mean cosine of its embeddings to
    the original's must stay at or above ``min_cosine`` points and their 5th percentile at or above
    ``min_cosine_p5``. Measured on all-MiniLM-L6-v2 (STS-B): removing one FFN block turns embeddings by a mean
    cosine of 89-96 at no loss of dev Spearman (the geometry between texts is kept while the space rotates),
    while candidates that lost 1-3 points sat at 74-85; so the defaults stop what breaks the space, and the
    labelled metric, where there is one, holds the promise."""

    texts: int = 0
    min_cosine: float = 88.0
    min_cosine_p5: float = 80.0

    def validate(self) -> None:
        if self.texts < 0:
            raise AxformerError(f"--fidelity-texts {self.texts}; expected a number of texts (0: off)")
        for name, value in (("--min-cosine", self.min_cosine), ("--min-cosine-p5", self.min_cosine_p5)):
            if not -100.0 <= value <= 100.0:
                raise AxformerError(f"{name} {value}; expected points of cosine between -100 and 100")

    def pool_size(self, embedding: bool) -> int:
        return self.texts or (EMBEDDING_POOL_TEXTS if embedding else 0)


@dataclass
class ArtifactFormat:
    """What the size goal counts bytes of: the artifact the export will write (formats, block size, vocabulary).

    The pipeline fills it from its export section; alone, ``axformer optimize --goal size`` counts an fp32
    artifact. The search ranks and stops by these bytes; the export then writes that artifact and measures it.
    """

    matrices: str = "fp32"  # fp32, int8 or int4 (Q/K/V are int4 only with int4_attention)
    embeddings: str = "fp32"
    block_size: int = 32
    int4_attention: bool = False
    prune_vocabulary: bool = False
    trim_positions: bool = False
    table_block_size: int | None = None  # int4 tables' block (None: block_size)
    vocabulary_min_count: int = 1

    def validate(self) -> None:
        for name in ("matrices", "embeddings"):
            if getattr(self, name) not in ("fp32", "int8", "int4"):
                raise AxformerError(f"search.artifact.{name} {getattr(self, name)!r}; expected fp32, int8 or int4")
        check_block_size(self.block_size, "int4 block size")
        check_block_size(self.table_block_size, "int4 table block size")


@dataclass
class OptimizeConfig:
    goal: str = "accuracy"
    target_speedup: float | None = None  # speed: stop once the predicted batch-1 speed-up reaches this
    target_size: float | None = None  # size: stop once the model is this many times smaller
    tolerance: Tolerance = field(default_factory=Tolerance)
    axformer: AxFormerRule = field(default_factory=AxFormerRule)
    attention: AttentionSearch = field(default_factory=AttentionSearch)
    recovery: Recovery = field(default_factory=Recovery)
    certificate: Certification = field(default_factory=Certification)
    fidelity: FidelityDecision = field(default_factory=FidelityDecision)
    artifact: ArtifactFormat = field(default_factory=ArtifactFormat)  # size goal: what its bytes are counted in
    # unlabelled in-domain texts: the final model's fidelity to the original is measured on them (and on a
    # sample of the training texts) and reported beside the certificate
    calibration_texts: str | None = None
    calibration_columns: list[str] | None = None  # for .csv/.tsv/.jsonl files: one column per text field
    # a labelled file in the task's format that replaces the held-out split for every decision and the
    # certificate (--decision-data: inputs like the ones the model will serve); None: the held-out split
    decision_data: str | None = None
    groups: int = 12
    # speed and size goals: which units the search removes. "all": layers, blocks, then heads and FFN groups;
    # "coarse": layers and blocks only; "auto": coarse when recovering by distillation. Why: one head changes
    # fewer answers than one deciding example resolves, so twenty head removals each "within tolerance" add up to
    # damage the deciding examples never saw, and distillation won it back less well than a smaller number of
    # whole layers and blocks (measured on BBC News, docs/promises.md)
    units: str = "auto"
    max_examples: int | None = 2000
    sample_seed: int = 0
    batch_size: int = 64
    latency_examples: int = 200  # dev texts timed at batch 1
    # speed goal: where the cost model times the variants it is fitted on: "pytorch" (the model as searched) or
    # "onnxruntime-int8" (as the default int8 artifact runs: targets and speed-ups are then over ONNX Runtime
    # int8 of the unpruned model, whatever this CPU's int8 kernels gain; axformer.export.deployed)
    latency_runtime: str = "pytorch"
    device: str = "auto"
    allow_pickle: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.goal not in GOALS:
            raise AxformerError(f"--goal {self.goal!r}; expected one of {', '.join(GOALS)}")
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise AxformerError(
                f"--latency-runtime {self.latency_runtime!r}; expected one of {', '.join(LATENCY_RUNTIMES)}"
            )
        parts = (self.tolerance, self.axformer, self.attention, self.recovery, self.certificate, self.fidelity)
        for part in (*parts, self.artifact):
            part.validate()
        if self.goal != "accuracy" and self.tolerance.max_drop is None and self.tolerance.max_rel_drop is None:
            raise AxformerError(f"--goal {self.goal} needs a tolerance: --max-drop or --max-rel-drop")
        if self.units not in UNITS:
            raise AxformerError(f"--units {self.units!r}; expected one of {', '.join(UNITS)}")
        if self.groups < 1:
            raise AxformerError(f"--groups {self.groups}; expected a positive number")
        if self.decision_data is not None and not Path(self.decision_data).is_file():
            raise AxformerError(
                f"--decision-data {self.decision_data} does not exist; expected a labelled file in the task's format"
            )
        if self.calibration_texts is not None and not Path(self.calibration_texts).is_file():
            raise AxformerError(
                f"--calibration-texts {self.calibration_texts} does not exist; expected a .txt, .csv, .tsv or "
                ".jsonl file"
            )
        for name in ("target_speedup", "target_size"):
            v = getattr(self, name)
            if v is not None and v <= 1:
                raise AxformerError(f"--{name.replace('_', '-')} {v}; expected a factor above 1 (e.g. 1.5)")

    @classmethod
    def from_dict(cls, values: dict, where: str = "search") -> OptimizeConfig:
        """From a (possibly old, flat) mapping."""
        return from_mapping(cls, upgrade_flat_keys(values), where)

    def to_dict(self) -> dict:
        return to_mapping(self)

    @property
    def coarse_units_only(self) -> bool:
        return self.units == "coarse" or (self.units == "auto" and self.recovery.mode == "distill")


# flat keys of configs written before the sub-configs, and where each lives now
_FLAT_KEYS = {
    "max_drop": ("tolerance", "max_drop"),
    "max_rel_drop": ("tolerance", "max_rel_drop"),
    "guard": ("tolerance", "guard"),
    "max_loss_increase": ("tolerance", "max_loss_increase"),
    "slack": ("axformer", "slack"),
    "fraction": ("axformer", "fraction"),
    "prune_layers": ("axformer", "prune_layers"),
    "k": ("attention", "k"),
    "attention_modes": ("attention", "modes"),
    "attention_layers": ("attention", "layers"),
    "refinetune": ("recovery", "mode"),
    "refinetune_epochs": ("recovery", "epochs"),
    "refinetune_lr": ("recovery", "learning_rate"),
    "refinetune_batch_size": ("recovery", "batch_size"),
    "refinetune_max_train_examples": ("recovery", "max_train_examples"),
}


def upgrade_flat_keys(values: dict) -> dict:
    """Old flat search settings moved into their sub-configs; ``hard_attention: false`` becomes
    ``attention.modes: []`` (the one way to turn approximate attention off); ``extra`` (never used) is dropped."""
    if not isinstance(values, dict):
        return values
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items() if k not in _FLAT_KEYS}
    out.pop("extra", None)
    hard = out.pop("hard_attention", None)
    for old, (section, new) in _FLAT_KEYS.items():
        if old in values:
            out.setdefault(section, {})
            if isinstance(out[section], dict):
                out[section][new] = values[old]  # a flat key given beside its section is the explicit one
    if hard is False:
        out.setdefault("attention", {})["modes"] = []
    return out
