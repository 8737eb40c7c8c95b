"""A time budget for the FastFormers recipe: measure, plan the epochs that fit, print the plan, then keep to it.

The recipe's cost is dominated by its two distillations, whose length is the one thing a plan can choose
(epochs, fractions allowed). Everything else (the teacher's outputs, computed once and kept for both
distillations; gradient importance; the held-out evaluations that select checkpoints; the final export and
summaries) is a fixed cost. Both are priced from one measurement on this machine before anything starts: the
forward and forward+backward seconds per training example of the teacher and of the recipe's own students
(built with the recipe's sizes), on a sample of the real training inputs at their real lengths. The plan gives
each distillation the same number of epochs (FastFormers' recipe does), as many as fit, never more than
configured; each distillation's training also stops when the plan's schedule says it must (time an earlier
stage overran comes out of it), keeping the best checkpoint so far.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from axformer.data.batching import collate, encode, grouped_batches, sorted_batches
from axformer.distill.augment import later_windows
from axformer.distill.students import derive_student, parse_layers, prune_by_importance
from axformer.errors import AxformerError
from axformer.inference import per_example_loss
from axformer.models.loading import load_model, load_tokenizer
from axformer.runtime.timing import sync
from axformer.surgery.fake_quant import int8_aware
from axformer.surgery.prune import apply_structure, current_structure
from axformer.tasks.data import TaskData
from axformer.training.finetune import training_split, training_subset
from axformer.utils.device import autocast, training_dtype

MIN_EPOCHS = 0.05  # below this a distillation is not worth running: the budget is refused instead
EXPORT_EVALUATIONS = 3  # precisions the export evaluates on the held-out split (int8, mixed, fp32 at most)
# conversion, graph fusion and quantization, besides the precision checks priced from the measurement (an
# allowance: the demo's whole export stage, checks included, took 42 s on a 2-core AMD EPYC)
EXPORT_FIXED_S = 30.0
# a benchmark row's memory probe and its multi-instance workers each start processes that import torch or ONNX
# Runtime and load the model (an allowance, like EXPORT_FIXED_S)
PROCESS_FIXED_S = 8.0


@dataclass
class Downstream:
    """What follows the recipe within the same budget (the pipeline's export and benchmark), by how it is priced.

    The benchmark is mostly batch-1 requests, not batched passes: priced at the teacher's batched per-example
    rate (3.6 ms on SST-2), the plan kept 2.0 minutes for a benchmark that took 5.9-8.4 (sessions 17-19), because a
    request of the teacher costs 21 ms, one padded to 128 tokens 51 ms, and the fixed lengths go up to 512."""

    passes: int = 0  # batched example forwards: dev scoring, throughput, the export's checks
    requests: int = 0  # batch-1 requests at real lengths
    padded_requests: int = 0  # batch-1 requests padded to the maximum length
    long_passes: dict[int, int] = field(default_factory=dict)  # a fixed length -> example forwards at it
    exports: int = 0  # ONNX conversions: the artifact's and the baselines'
    processes: int = 0  # worker processes started (memory probes, multi-instance pools)

    def seconds(self, forward: float, request: float, padded: float, max_length: int) -> float:
        """Each part at the teacher's measured cost (an upper bound: most rows are smaller or ONNX models);
        fixed lengths scale the padded request linearly in length."""
        long = sum(n * padded * length / max_length for length, n in self.long_passes.items())
        return (
            self.passes * forward
            + self.requests * request
            + self.padded_requests * padded
            + long
            + self.exports * EXPORT_FIXED_S
            + self.processes * PROCESS_FIXED_S
        )

    def describe(self) -> str:
        return (
            f"{self.passes} batched passes, {self.requests + self.padded_requests} requests, "
            f"{sum(self.long_passes.values())} at fixed lengths"
        )


@dataclass
class StagePlan:
    stage: str
    seconds: float
    epochs: float | None = None
    what: str = ""
    # of a distillation: the part before its final evaluation (where the schedule ends its training)
    training_seconds: float | None = None


@dataclass
class RecipePlan:
    budget_seconds: float
    forward_s_per_example: float  # the teacher, measured
    train_s_per_example: float  # the first student trained, forward + backward, measured
    train_examples: int
    epochs: float | None  # of each distillation (None: the recipe distils nothing)
    stages: list[StagePlan] = field(default_factory=list)
    # the teacher's outputs, computed once by the first distillation that runs and read by every later one
    teacher_outputs_seconds: float = 0.0
    # the smaller students to try first (axformer.distill.ladder) that the plan left out, and why
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def stage(self, name: str) -> StagePlan | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_dict(self) -> dict:
        return asdict(self)

    def training_deadline(self, stage: str, finished_before: set[str] = frozenset()) -> float:
        """Seconds from the start of a (possibly resumed) recipe call at which ``stage``'s training must end:
        when what is left of the budget (the stages a previous call finished counted at their planned length)
        is what the stages after it are planned to need. Time an earlier stage overran comes out of its
        training, time it saved is added to it, and so is the plan's slack when the epochs, not the budget,
        bound the plan (SST-2's 3 epochs were planned in 34 of 55 minutes; stopped at their own planned 19.0 and
        12.3 minutes, its distillations got 1.67 and 2.03 epochs with 20 minutes of the budget unused)."""
        planned = self.stage(stage)
        if planned is None or planned.training_seconds is None:
            raise AxformerError(f"the recipe's plan has no training stage {stage!r}")
        later = self.stages[self.stages.index(planned) + 1 :]
        done = sum(s.seconds for s in self.stages if s.stage in finished_before)
        after = sum(s.seconds for s in later) + planned.seconds - planned.training_seconds
        return self.budget_seconds - done - after

    def table(self) -> str:
        lines = [
            f"time budget {self.budget_seconds / 60:.1f} min; measured here per training example: teacher "
            f"forward {1e3 * self.forward_s_per_example:.2f} ms, student training step "
            f"{1e3 * self.train_s_per_example:.2f} ms ({self.train_examples} examples)",
            "plan:",
        ]
        for s in self.stages:
            epochs = f", {s.epochs:.2f} epochs" if s.epochs is not None else ""
            lines.append(f"  {s.stage:<30} {s.seconds / 60:6.1f} min{epochs}  ({s.what})")
        lines.append(f"  {'total':<30} {self.seconds / 60:6.1f} min")
        lines += [f"  not tried: {label} ({why})" for label, why in self.skipped.items()]
        return "\n".join(lines)

    def tries(self, label: str) -> bool:
        """Whether the plan keeps the smaller student ``label`` (a ``StudentRung.label``) to try first."""
        return any(s.stage.startswith(label + "/") for s in self.stages)


def _per_example_seconds(
    net,
    enc,
    batch_size: int,
    eval_batch_size: int,
    device,
    regression: bool,
    seed: int = 0,
    timed: int = 5,
    dtype: torch.dtype | None = None,
) -> tuple[float, float, float]:
    """(forward, training step, forward in ``dtype``) seconds per example of ``net`` over ``enc``, in the batches
    the real passes use. Training steps and a distillation's teacher pass run in the trainer's mixed precision
    ``dtype`` (None: fp32, and the third figure is the first); evaluations run in fp32.

    The trainer's batches are grouped by length (``grouped_batches``) and inference's sorted by it
    (``sorted_batches``), so they pad little; on SST-2's phrases a training step of the 3-layer student costs
    14.79 ms per example on random batches and 6.13 on the trainer's (benchmarks/experiments/recipe_plan.py),
    and the plan timed on random ones gave the recipe 1.72 epochs of a 55-minute budget it then used 32 minutes
    of. A batch costs a fixed part plus a part per token: a few
    batches spread over the token counts are timed, that line is fitted, and it prices every batch of the
    sample."""
    rng = np.random.default_rng(seed)
    passes = {
        False: sorted_batches(enc.lengths, eval_batch_size),
        True: grouped_batches(enc.lengths, batch_size, rng),
    }
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.0)  # the step the trainer takes, changing nothing

    def step(idx, train_step: bool, dtype: torch.dtype | None) -> float:
        net.train(train_step)
        t0 = time.perf_counter()
        batch = collate(enc, idx, device)
        labels = batch.pop("labels")
        if train_step:
            with autocast(dtype, device):
                loss = per_example_loss(net(**batch).logits, labels, regression).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast(dtype, device):
                net(**batch)
        sync()
        return time.perf_counter() - t0

    def seconds(train_step: bool, dtype: torch.dtype | None) -> float:
        batches = passes[train_step]
        tokens = np.array([len(enc.rows(b)) * max(len(enc.input_ids[i]) for i in enc.rows(b)) for b in batches])
        order = np.argsort(tokens, kind="stable")
        pick = order[np.unique(np.linspace(0, len(order) - 1, min(timed, len(order))).round().astype(int))]
        step(batches[order[0]], train_step, dtype)  # warm-up: allocations, autograd's first graph
        t = np.array([step(batches[i], train_step, dtype) for i in pick])
        x = tokens[pick].astype(float)
        slope = np.polyfit(x, t, 1)[0] if len(set(x)) > 1 else 0.0
        slope = max(slope, 0.0)
        intercept = max(float(np.mean(t - slope * x)), 0.0)
        return float(intercept * len(batches) + slope * tokens.sum()) / len(enc)

    forward = seconds(False, None)
    return forward, seconds(True, dtype), forward if dtype is None else seconds(False, dtype)


def _request_seconds(net, enc, max_length: int, device, requests: int = 8) -> tuple[float, float]:
    """(seconds of one batch-1 request, of one padded to ``max_length``) of ``net``: medians over a few
    examples at the sample's 90th-percentile length (the plan reads no dev text, and SST-2's dev sentences are
    longer than its median training phrase)."""
    import torch.nn.functional as F

    net.eval()
    lengths = enc.lengths
    pick = np.argsort(np.abs(lengths - np.percentile(lengths, 90)), kind="stable")[:requests]

    def once(idx, pad_to: int | None) -> float:
        batch = collate(enc, [int(idx)], device)
        batch.pop("labels")
        if pad_to is not None:
            batch = {k: F.pad(v, (0, max(0, pad_to - v.shape[-1]))) if v.dim() == 2 else v for k, v in batch.items()}
        t0 = time.perf_counter()
        with torch.no_grad():
            net(**batch)
        sync()
        return time.perf_counter() - t0

    once(pick[0], None)  # warm-up
    # a model with fewer positions than the task's length is timed at its own limit and scaled to the length
    longest = min(max_length, getattr(net.config, "max_position_embeddings", max_length) or max_length)
    padded = float(np.median([once(i, longest) for i in pick[: max(2, requests // 2)]]))
    return float(np.median([once(i, None) for i in pick])), padded * max_length / longest


def measure(
    model: str, data: TaskData, train, config, device, examples: int = 1600, teacher: dict | None = None
) -> dict[str, tuple[float, ...]]:
    """Per example, (forward, training step, forward in the trainer's precision) seconds of the teacher and of the
    recipe's own students (and, under "request", the teacher's batch-1 request at real and at maximum length:
    ``_request_seconds``), built here with the recipe's sizes (which heads and neurons a student keeps does not
    change its cost: the pruned one keeps the first ones), on a seeded sample of the training inputs at their
    real lengths, batched as the real passes batch them (``_per_example_seconds``: a few batches timed). Small
    models are dominated by per-step overheads that no parameter count predicts, so they are timed, not scaled.
    ``teacher``: a dict the teacher's timings are kept in (filled by the first call, read by later ones: the
    smaller students a ladder plans share the teacher)."""
    d = config.distill
    net = load_model(model, data.spec, device=device)
    tok = load_tokenizer(model)
    sample = train.subset(np.sort(np.random.default_rng(0).permutation(len(train))[: min(examples, len(train))]))
    max_length = d.max_seq_length or data.spec.default_max_length
    enc = encode(tok, sample, max_length, separate=data.spec.is_embedding)
    regression = data.spec.is_regression

    dtype = training_dtype(d.precision, device)

    def timed(m):
        return _per_example_seconds(m, enc, d.batch_size, d.eval_batch_size, device, regression, dtype=dtype)

    def last(m):  # the last distillation trains through the int8 rounding when the recipe asks for it (slower)
        if config.qat_int8:
            m = copy.deepcopy(m)
            int8_aware(m)
        return m

    teacher = {} if teacher is None else teacher
    if not teacher:  # the teacher's timings, kept for the next plan of the same recipe
        teacher.update(teacher=timed(net), request=_request_seconds(net, enc, max_length, device))
    out = dict(teacher)
    student = copy.deepcopy(net)
    pruned = config.heads is not None or config.ffn is not None
    if config.student_layers is not None:
        present = current_structure(student).present_layers
        student = derive_student(student, parse_layers(config.student_layers, present))
        out["student"] = timed(student if pruned else last(student))
    if pruned:
        structure = current_structure(student)
        width = max(len(structure.layers[i].heads) for i in structure.present_layers)
        neurons = max(len(structure.layers[i].neurons) for i in structure.present_layers)
        first = np.tile(-np.arange(max(width, neurons), dtype=float), (len(structure.layers), 1))
        target = prune_by_importance(structure, first[:, :width], first[:, :neurons], config.heads, config.ffn,
                                     config.budget)  # fmt: skip
        out["pruned"] = timed(last(apply_structure(student, target)))
    return out


def plan_recipe(
    model: str,
    data: TaskData,
    config,
    budget_seconds: float,
    device,
    downstream: Downstream | None = None,
    judged: bool = False,
    teacher: dict | None = None,
) -> RecipePlan:
    """Epochs for each distillation so that the whole recipe fits ``budget_seconds`` (see the module doc).

    ``downstream``: what follows the recipe within the same budget (the pipeline's export and benchmark),
    priced from the teacher's measured costs (``Downstream.seconds``). ``judged``: the plan of a smaller student
    tried first (``plan_ladder``), which ends in its judgement (the teacher and the student scored on the held-out
    split, the student's artifact exported and checked) instead of an export and summaries of its own.
    """
    d = config.distill
    _, _, train_part, heldout = training_split(model, data, d)
    timed = measure(model, data, train_part, config, device, teacher=teacher)
    forward = timed["teacher"][0]
    from axformer.distill.trainer import perturbed_inputs

    # the distillations' inputs: the training part and the extra unlabelled ones the trainer will add to it
    added = len(
        later_windows(
            load_tokenizer(model), train_part.texts, d.max_seq_length or data.spec.default_max_length, d.windows
        )
    )
    added += len(perturbed_inputs(replace(d, selection_data=config.decision_data), data, train_part, heldout, model))
    n = len(training_subset(train_part, d.max_train_examples, d.seed)) + added
    select = min(len(heldout), d.eval_max_examples or len(heldout))
    scored = len(heldout) + sum(len(s) for s in data.dev.values())  # what every final evaluation scores
    students = [k for k in ("student", "pruned") if k in timed]  # "request" is the teacher's, below
    teacher_outputs = n * timed["teacher"][2]  # once (in the trainer's precision), kept for both distillations
    importance = min(config.importance_examples or len(heldout), len(heldout))
    prune_s = importance * timed["student" if "student" in timed else "teacher"][1] if "pruned" in timed else 0.0
    last = timed[students[-1]] if students else timed["teacher"]
    export_s = EXPORT_FIXED_S + EXPORT_EVALUATIONS * len(heldout) * last[0] if config.export is not None else 0.0
    summaries = sum(scored * timed[k][0] for k in ("teacher", *students)) + (export_s > 0) * scored * last[0]
    if judged:
        export_s = 0.0
        summaries = EXPORT_FIXED_S + len(heldout) * (forward + (EXPORT_EVALUATIONS + 1) * last[0])
    request, padded = timed["request"]
    max_length = d.max_seq_length or data.spec.default_max_length
    after = downstream.seconds(forward, request, padded, max_length) if downstream is not None else 0.0
    finals = {k: scored * timed[k][0] for k in students}  # each distillation's final evaluation
    spend = teacher_outputs + sum(finals.values()) + prune_s + export_s + summaries + after
    per_epoch = {k: n * timed[k][1] + select * timed[k][0] for k in students}  # training and its selection pass
    epochs = None
    if students:
        fit = (budget_seconds - spend) / sum(per_epoch.values())
        if fit < MIN_EPOCHS:
            need = spend + MIN_EPOCHS * sum(per_epoch.values())
            raise AxformerError(
                f"--time-budget {budget_seconds / 60:.1f} min is too short for this recipe: its fixed stages need "
                f"about {spend / 60:.1f} min and one epoch of its distillations {sum(per_epoch.values()) / 60:.1f} "
                f"min on this machine; give at least {need / 60:.1f} min"
            )
        epochs = min(d.epochs, fit)
    stages: list[StagePlan] = []
    for k, name, what in (
        ("student", "1-distilled", f"layers {config.student_layers}"),
        ("pruned", "3-distilled-again", f"heads {config.heads}, ffn {config.ffn}"),
    ):
        if k not in timed:
            continue
        if k == "pruned":
            stages.append(StagePlan("2-pruned", prune_s, None, f"gradient importance on {importance} examples"))
        own = teacher_outputs if k == students[0] else 0.0
        training = own + epochs * per_epoch[k]
        stages.append(StagePlan(name, training + finals[k], epochs, what, training))
    if config.export is not None and not judged:
        stages.append(StagePlan(f"4-export-{config.export}", export_s, None, "conversion and precision checks"))
    if judged:
        stages.append(StagePlan("judge", summaries, None, "scored against the teacher, its artifact checked"))
    else:
        stages.append(StagePlan("summaries", summaries, None, "every stage scored on held-out and dev"))
    if downstream is not None:
        stages.append(StagePlan("export and benchmark", after, None, downstream.describe()))
    train_s = timed[students[0]][1] if students else timed["teacher"][1]
    return RecipePlan(budget_seconds, forward, train_s, n, epochs, stages, teacher_outputs if students else 0.0)


def plan_ladder(
    model: str, data: TaskData, config, budget_seconds: float, device, downstream: Downstream | None = None
) -> RecipePlan:
    """The recipe's plan (``plan_recipe``) with the smaller students to try first (``config.trials``) in front of
    it, each kept only when it trains for the recipe's full epochs and the recipe's own student still fits after
    it at its own: a rung the budget squeezes would be judged half-trained, and one that fails must leave the
    fallback its time. The teacher's outputs are paid once, by the first distillation that runs."""
    teacher: dict = {}  # timed once, for every plan below
    main = plan_recipe(model, data, config, budget_seconds, device, downstream, teacher=teacher)
    if not config.trials:
        return main
    epochs = config.distill.epochs
    tried: list[StagePlan] = []
    skipped: dict[str, str] = {}
    for rung in config.trials:
        if main.epochs is not None and main.epochs < epochs:
            skipped[rung.label] = (
                f"the recipe's own student gets {main.epochs:.2f} of {epochs:g} epochs: no time to try another"
            )
            continue
        sub = plan_recipe(model, data, rung.sizes_of(config), budget_seconds, device, judged=True, teacher=teacher)
        stages = [replace(s, stage=f"{rung.label}/{s.stage}") for s in sub.stages]
        if tried:  # an earlier rung computed the teacher's outputs
            first = next(s for s in stages if s.training_seconds is not None)
            first.seconds -= sub.teacher_outputs_seconds
            first.training_seconds -= sub.teacher_outputs_seconds
        own = sum(s.seconds for s in stages)
        after = main.seconds - main.teacher_outputs_seconds
        total = sum(s.seconds for s in tried) + own + after
        if sub.epochs is not None and sub.epochs < epochs or total > budget_seconds:
            skipped[rung.label] = (
                f"it needs {own / 60:.1f} min at {epochs:g} epochs, and the recipe's own student {after / 60:.1f} min "
                f"after it: over the {budget_seconds / 60:.1f} min budget"
            )
            continue
        tried += stages
    if not tried:
        return replace(main, skipped=skipped)
    own_stages = [replace(s) for s in main.stages]
    first = next((s for s in own_stages if s.training_seconds is not None), None)
    if first is not None:  # the rungs tried first computed the teacher's outputs
        first.seconds -= main.teacher_outputs_seconds
        first.training_seconds -= main.teacher_outputs_seconds
    return replace(main, stages=tried + own_stages, skipped=skipped)
