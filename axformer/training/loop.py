"""The training loop shared by fine-tuning and distillation.

AdamW with linear warmup and decay, gradient clipping, length-grouped batches
with dynamic padding, model selection on the held-out split (never on dev), and
checkpoints that let an interrupted run resume exactly where it stopped. What
is minimised is an :class:`Objective`: the task loss for fine-tuning, the
teacher-matching losses for distillation; the loop does not care which.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from axformer.data.batching import Encoded, collate, encode, grouped_batches
from axformer.errors import AxformerError
from axformer.evaluation import Evaluation, predictions_rows, score
from axformer.inference import per_example_loss, run_model
from axformer.models.loading import save_model
from axformer.models.record import ModelRecord
from axformer.surgery.fake_quant import freeze
from axformer.tasks.data import Split, TaskData
from axformer.tasks.splits import SplitRecord
from axformer.utils.device import PRECISIONS, autocast, precision_name, training_dtype
from axformer.utils.io import atomic_output_dir, claim_work_dir, run_key, write_json

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"


def scores_higher(candidate: tuple[float, float], incumbent: tuple[float, float]) -> bool:
    """``(main metric, loss)`` pairs: a higher metric wins, a lower loss breaks a tie. One rule for which held-out
    checkpoint a training keeps and for whether a recovery is kept at all (``axformer.search.recovery``)."""
    return candidate[0] > incumbent[0] or (candidate[0] == incumbent[0] and candidate[1] < incumbent[1])


RUN_KEY = "run.json"


@dataclass
class FinetuneConfig:
    """Training hyper-parameters (fine-tuning and distillation). Defaults are the recipe recommended in the README."""

    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_seq_length: int | None = None  # None: the task's default (128; 384 for question answering)
    max_train_examples: int | None = None
    heldout_fraction: float = 0.15
    seed: int = 42
    eval_every: int | None = None  # steps between held-out evaluations; None: once per epoch
    eval_max_examples: int | None = 2000  # held-out examples used for model selection during training
    # positions in the held-out split that may select the checkpoint (None: all); recovery after a certified
    # search passes the decision part, so checkpoint selection never sees the confirmation examples
    selection_positions: list[int] | None = None
    # a labelled file in the task's format (--decision-data) that selects the checkpoint instead of the held-out
    # split, at ``selection_positions`` of it: the decisions are to be taken on inputs like those served
    selection_data: str | None = None
    # stop after this many seconds of training (a time budget's safety net; None: run every step), keeping the
    # best checkpoint evaluated so far. An interrupted run's seconds count when it resumes, and the limit is not part
    # of the run's identity: a resumed call may pass what is left of a budget
    max_seconds: float | None = None
    checkpoint_every: int = 50  # steps between resumable checkpoints
    new_head: bool = False
    allow_pickle: bool = False
    device: str = "auto"
    # mixed precision of the training steps (and of a distillation's teacher pass): auto is bf16 where the
    # hardware multiplies it natively, fp32 elsewhere (axformer.utils.device.training_dtype). Checkpoint selection
    # and every evaluation stay fp32, so decisions compare like with like
    precision: str = "auto"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise AxformerError(f"--train-precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("epochs", "learning_rate", "batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise AxformerError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise AxformerError(f"--max-train-examples must be positive, got {self.max_train_examples}")


@dataclass
class FinetuneResult:
    output: Path
    evaluation: Evaluation
    steps: int
    wall_time_s: float
    log: list[dict] = field(default_factory=list)
    stopped_by_time: bool = False  # ended at ``max_seconds`` before its last step (best checkpoint so far kept)


class Objective(Protocol):
    """What a training step minimises. ``extra`` holds its own trainable modules (e.g. projections), checkpointed with
    the model.
    """

    extra: torch.nn.Module | None
    temporary_files: tuple[str, ...]  # written in the run directory by prepare(), removed when the run ends

    def describe(self) -> dict: ...

    def prepare(self, work: Path, enc_train: Encoded, device: torch.device) -> None: ...

    def loss(
        self, net: torch.nn.Module, batch: dict[str, torch.Tensor], indices: np.ndarray
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class LabelObjective:
    """Fine-tuning: the task's own loss on the gold labels."""

    extra = None
    temporary_files: tuple[str, ...] = ()

    def __init__(self, regression: bool):
        self.regression = regression

    def describe(self) -> dict:
        return {"objective": "labels"}

    def prepare(self, work: Path, enc_train: Encoded, device: torch.device) -> None:
        pass

    def loss(self, net, batch, indices):
        labels = batch.pop("labels")
        loss = per_example_loss(net(**batch).logits, labels, self.regression).mean()
        return loss, {}


def _optimizer(modules: list[torch.nn.Module], config: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def selection_subset(heldout: Split, config: FinetuneConfig, data: TaskData) -> Split:
    """The examples that select the checkpoint: the held-out split's, or the decision file's (a fixed sample
    when large)."""
    if config.selection_data is not None:
        from axformer.evaluation.context import read_decision_data

        heldout = read_decision_data(config.selection_data, data)
    if config.selection_positions is not None:
        heldout = heldout.subset(np.asarray(sorted(config.selection_positions), dtype=np.int64))
    if config.eval_max_examples is not None and len(heldout) > config.eval_max_examples:
        return heldout.subset(
            np.sort(np.random.default_rng(config.seed + 1).permutation(len(heldout))[: config.eval_max_examples])
        )
    return heldout


def train_model(
    net: torch.nn.Module,
    tokenizer,
    data: TaskData,
    split: SplitRecord,
    train_part: Split,
    heldout: Split,
    output: str | Path,
    config: FinetuneConfig,
    objective: Objective,
    stage: dict,
    prior: ModelRecord,
    key: dict,
    device: torch.device,
    overwrite: bool = False,
) -> FinetuneResult:
    """Train ``net`` on ``train_part`` for ``objective``; save the best held-out checkpoint to ``output``.

    ``key`` identifies the run: re-running with the same key after an
    interruption resumes from the last checkpoint in ``output.partial``.
    ``stage`` is appended to the model's history in ``axformer.json``.
    """
    spec = data.spec
    t_start = time.perf_counter()
    if config.max_seq_length is None:
        config.max_seq_length = spec.default_max_length
    select_split = selection_subset(heldout, config, data)
    enc_train = encode(tokenizer, train_part, config.max_seq_length, separate=spec.is_embedding)
    enc_select = encode(tokenizer, select_split, config.max_seq_length, separate=spec.is_embedding)
    lengths = enc_train.lengths
    steps_per_epoch = math.ceil(len(enc_train) / config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    eval_every = config.eval_every or steps_per_epoch
    trainable = [net] + ([objective.extra] if objective.extra is not None else [])
    dtype = training_dtype(config.precision, device)
    # fp16's small range needs the loss scaled (a no-op for bf16 and fp32)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    with atomic_output_dir(output, overwrite=overwrite) as work:
        claim_work_dir(
            work,
            run_key(
                {
                    **key,
                    # a time limit stops a run but does not change its steps: a resumed call may bring another one
                    "config": {k: v for k, v in asdict(config).items() if k not in ("device", "max_seconds")},
                    "objective": objective.describe(),
                    "precision": precision_name(dtype),
                }
            ),
            RUN_KEY,
        )
        with autocast(dtype, device):
            objective.prepare(work, enc_train, device)
        optimizer = _optimizer(trainable, config)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
        step, best, log = 0, None, []
        spent_before = 0.0  # seconds an interrupted call spent before this one: max_seconds counts them too
        if (work / CHECKPOINT).exists():
            ckpt = torch.load(work / CHECKPOINT, map_location=device, weights_only=True)
            net.load_state_dict(ckpt["model"])
            if objective.extra is not None:
                objective.extra.load_state_dict(ckpt["extra"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            step, best, log = ckpt["step"], ckpt["best"], json.loads(ckpt["log"])
            spent_before = float(ckpt.get("spent_s", 0.0))
            tqdm.write(f"resuming from step {step}/{total_steps} in {work}")

        def evaluate_now() -> dict:
            outs = run_model(net, enc_select, spec.is_regression, config.eval_batch_size, device)
            res = score(spec, select_split.labels, outs)
            return {"loss": res.loss, spec.main_metric: res.main}

        def save_checkpoint() -> None:
            state = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "best": best,
                "log": json.dumps(log),
                "spent_s": spent_before + time.perf_counter() - t_start,
            }
            if objective.extra is not None:
                state["extra"] = objective.extra.state_dict()
            tmp = work / (CHECKPOINT + ".tmp")
            torch.save(state, tmp)
            tmp.replace(work / CHECKPOINT)

        bar = tqdm(total=total_steps, initial=step, desc=f"{stage['stage']} {spec.display_name}", unit="step")
        running, seen, parts = 0.0, 0, {}
        epoch_batches: dict[int, list[np.ndarray]] = {}
        stopped_early = False
        while step < total_steps:
            epoch = step // steps_per_epoch
            if epoch not in epoch_batches:
                epoch_batches = {
                    epoch: grouped_batches(
                        lengths, config.batch_size, np.random.default_rng(config.seed * 1000 + epoch)
                    )
                }
            idx = epoch_batches[epoch][step % steps_per_epoch]
            net.train()
            if objective.extra is not None:
                objective.extra.train()
            torch.manual_seed(config.seed * 100_003 + step)  # dropout masks reproducible across resumes
            with autocast(dtype, device):
                loss, terms = objective.loss(net, collate(enc_train, idx, device), idx)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for m in trainable for p in m.parameters()], config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running += loss.item()
            seen += 1
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.4f}")
            out_of_time = (
                config.max_seconds is not None and spent_before + time.perf_counter() - t_start > config.max_seconds
            )
            evaluated = step % eval_every == 0 or step == total_steps or out_of_time
            if evaluated:
                ev = evaluate_now()
                entry = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 3),
                    "train_loss": running / seen,
                    "lr": scheduler.get_last_lr()[0],
                    "heldout": ev,
                }
                if parts:
                    entry["train_terms"] = {k: v / seen for k, v in parts.items()}
                log.append(entry)
                running, seen, parts = 0.0, 0, {}
                here = (ev[spec.main_metric], ev["loss"])
                better = best is None or scores_higher(here, (best["metric"], best["loss"]))
                if better:
                    best = {"step": step, "metric": ev[spec.main_metric], "loss": ev["loss"]}
                    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(work / BEST))
                tqdm.write(
                    f"step {step}: held-out {spec.main_metric} {ev[spec.main_metric]:.2f}, loss {ev['loss']:.4f}"
                    + (" (best)" if better else "")
                )
            if evaluated or step % config.checkpoint_every == 0:
                save_checkpoint()  # also after each evaluation, so best.safetensors never runs ahead of the checkpoint
            if out_of_time and step < total_steps:  # evaluated just now: the best checkpoint so far is kept
                stopped_early = True
                tqdm.write(f"stopped at step {step}/{total_steps}: {config.max_seconds:.0f} s of training spent")
                break
        bar.close()

        net.load_state_dict(load_file(str(work / BEST), device=str(device)))
        freeze(net)  # quantization-aware training ends here: the weights are saved (and scored) on their grid
        result = Evaluation(task=spec.name, model=str(output))
        for name, part in {"heldout": heldout, **data.dev}.items():
            enc = encode(tokenizer, part, config.max_seq_length, separate=spec.is_embedding)
            outs = run_model(net, enc, spec.is_regression, config.eval_batch_size, device, progress=f"evaluate {name}")
            result.splits[name] = score(spec, part.labels, outs)
            with open(work / f"predictions_{name}.jsonl", "w") as f:
                for row in predictions_rows(spec, part, outs):
                    f.write(json.dumps(row) + "\n")
        wall = time.perf_counter() - t_start
        save_model(net, tokenizer, work)
        stage = {
            **stage,
            "config": asdict(config),
            "objective": objective.describe(),
            "best_step": best["step"],
            "steps": step,
            "stopped_by_time": stopped_early,
            "num_train_examples": len(train_part),
            "wall_time_s": round(wall, 1),
            "device": str(device),
            "precision": precision_name(dtype),
        }
        record = ModelRecord(
            task={**spec.to_dict(), "source": data.source},
            split=split,
            max_seq_length=config.max_seq_length,
            history=prior.history + [stage],
        )
        record.save(work)
        write_json(work / "metrics.json", result.to_dict())
        with open(work / "train_log.jsonl", "w") as f:
            for entry in log:
                f.write(json.dumps(entry) + "\n")
        for f in (CHECKPOINT, BEST, RUN_KEY):
            (work / f).unlink(missing_ok=True)
        for f in objective.temporary_files:
            (work / f).unlink(missing_ok=True)
    return FinetuneResult(Path(output), result, step, wall, log, stopped_early)
