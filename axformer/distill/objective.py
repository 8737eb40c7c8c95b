"""The distillation objective: what the student minimises at each training step.

    loss = soft x CE(student/T, teacher/T) T^2  +  hard x task loss on gold labels
         + hidden x MSE(projected student states, mapped teacher states)
         + attention x MSE(student attention maps, mapped teacher maps)

When only logits are matched, the teacher's logits for the whole training part
are computed once and kept in the run directory (a few floats per example), so
every epoch after that costs only the student, and a resumed run does not pay
for the teacher again.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from axformer.data.batching import Encoded
from axformer.distill.augment import check_augment_words
from axformer.distill.losses import attention_mse, hidden_mse, soft_cross_entropy
from axformer.errors import AxformerError
from axformer.inference import per_example_loss, run_model
from axformer.surgery.fake_quant import check_block_size
from axformer.training.loop import FinetuneConfig

TEACHER_CACHE = "teacher_logits.npy"
# where a search or a recipe keeps the teacher's outputs between its distillations (removed when it ends)
TEACHER_OUTPUTS = "teacher-outputs"


def teacher_key(teacher: nn.Module, enc: Encoded, regression: bool, precision: str = "fp32") -> str:
    """What the teacher's outputs on ``enc`` depend on, hashed: its weights and buffers, the exact token ids (and
    token types) in order, the problem kind and the precision it ran in. Any difference is a different key, never
    a stale cache."""
    h = hashlib.sha256(b"regression" if regression else b"classification")
    if precision != "fp32":  # fp32 keys stay what they were
        h.update(precision.encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu()
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    for i, ids in enumerate(enc.input_ids):
        h.update(np.asarray(ids, np.int64).tobytes())
        if enc.token_type_ids is not None:
            h.update(np.asarray(enc.token_type_ids[i], np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


@dataclass
class DistillConfig(FinetuneConfig):
    """Training hyper-parameters plus the loss weights. Defaults follow FastFormers: soft cross-entropy at T=1 only."""

    learning_rate: float = 1e-4
    temperature: float = 1.0
    soft_weight: float = 1.0
    hard_weight: float = 0.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    cache_teacher: bool = True
    # a directory where the teacher's outputs stay after the run, keyed by the teacher's weights and the exact
    # inputs: a second distillation from the same teacher on the same texts (the search's recovery retry) reads
    # them instead of running the teacher again (77 s per pass in the demo on an AMD EPYC)
    teacher_cache_dir: str | None = None
    # later windows of long training texts added as unlabelled inputs (teacher targets), per text; see
    # axformer.distill.augment
    windows: int = 0
    # perturbed copies of every training text added as unlabelled inputs (teacher targets), and the share of
    # words each perturbation touches; see axformer.distill.augment.perturbed_copies
    augment: int = 0
    augment_rate: float = 0.15
    # only texts of at least this many words get perturbed copies (0: every text)
    augment_min_words: int = 0
    # where replacement words come from: unigram or neighbours (axformer.distill.augment.AUGMENT_WORDS)
    augment_words: str = "unigram"
    # quantization-aware distillation (axformer.surgery.fake_quant): the encoder's matrices rounded to the int4
    # grid of blocks of this many input features in every forward pass (None: trained in fp32), Q/K/V too unless
    # qat_attention_inputs is off (they stay in a fused int8 Attention then), and the embedding tables in blocks
    # of qat_table_block_size along the hidden axis (None: tables not rounded). The saved weights are on the grid
    qat_block_size: int | None = None
    qat_attention_inputs: bool = True
    qat_table_block_size: int | None = None
    # quantization-aware distillation into a dynamic int8 artifact: every matrix product's weights (per output
    # row) and inputs (per tensor, as ONNX Runtime rounds them at run time) rounded in every forward pass
    # (axformer.surgery.fake_quant.int8_aware); not with the int4 rounding above
    qat_int8: bool = False

    def validate(self) -> None:
        super().validate()
        check_block_size(self.qat_block_size, "--qat-block-size")
        check_block_size(self.qat_table_block_size, "--qat-table-block-size")
        if self.qat_int8 and (self.qat_block_size or self.qat_table_block_size):
            raise AxformerError(
                "--qat-int8 with --qat-block-size/--qat-table-block-size; expected one grid: int8 or int4"
            )
        if self.augment < 0:
            raise AxformerError(f"--augment {self.augment}; expected a number of copies per text (0: none)")
        if not 0 < self.augment_rate < 1:
            raise AxformerError(f"--augment-rate {self.augment_rate}; expected a share of words between 0 and 1")
        if self.augment_min_words < 0:
            raise AxformerError(
                f"--augment-min-words {self.augment_min_words}; expected 0 (every text) or a number of words"
            )
        check_augment_words(self.augment_words, "--augment-words")
        if self.temperature <= 0:
            raise AxformerError(f"--temperature {self.temperature}; expected a positive number")
        weights = {n: getattr(self, n) for n in ("soft_weight", "hard_weight", "hidden_weight", "attention_weight")}
        if self.windows < 0:
            raise AxformerError(f"--windows {self.windows}; expected a number of windows per text (0: none)")
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise AxformerError(
                f"distillation loss weights {weights}; expected non-negative weights, at least one positive"
            )


class DistillObjective:
    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        config: DistillConfig,
        regression: bool,
        layer_map: list[int],
        labelled: int | None = None,
    ):
        """``labelled``: the training rows before this index have gold labels; the rest (later windows, perturbed
        copies, calibration texts) have only the teacher's outputs, so the gold-label term skips them."""
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.labelled = labelled
        self.regression = regression
        self.layer_map = layer_map
        self.cache: torch.Tensor | None = None
        self.temporary_files = (TEACHER_CACHE,)
        ws, wt = _width(student), _width(teacher)
        # a learned projection per matched hidden state when the widths differ (TinyBERT); none otherwise
        self.extra = (
            nn.ModuleList(nn.Linear(ws, wt) for _ in layer_map).to(next(student.parameters()).device)
            if config.hidden_weight > 0 and ws != wt
            else None
        )
        if config.attention_weight > 0:
            for m in (teacher, student):
                m.set_attn_implementation("eager")  # attention maps are only returned by the eager kernels

    @property
    def needs_states(self) -> bool:
        return self.config.hidden_weight > 0 or self.config.attention_weight > 0

    def describe(self) -> dict:
        c = self.config
        return {
            "objective": "distill",
            "temperature": c.temperature,
            "soft": c.soft_weight,
            "hard": c.hard_weight,
            "hidden": c.hidden_weight,
            "attention": c.attention_weight,
            "layer_map": self.layer_map,
            "projection": self.extra is not None,
        }

    def prepare(self, work: Path, enc_train: Encoded, device: torch.device) -> None:
        if self.needs_states or not self.config.cache_teacher:
            return
        path = work / TEACHER_CACHE
        kept = None if self.config.teacher_cache_dir is None else Path(self.config.teacher_cache_dir)
        if kept is not None:
            # outputs computed under autocast (the trainer's mixed precision) differ from fp32 ones: keyed apart
            mixed = torch.is_autocast_enabled(device.type)
            precision = str(torch.get_autocast_dtype(device.type)) if mixed else "fp32"
            kept = kept / f"teacher-{teacher_key(self.teacher, enc_train, self.regression, precision)}.npy"
            if kept.exists() and not path.exists():
                shutil.copyfile(kept, path)
        if path.exists():
            logits = np.load(path)
        else:
            logits = run_model(
                self.teacher, enc_train, self.regression, self.config.eval_batch_size, device, progress="teacher logits"
            ).logits
            np.save(path.with_suffix(".tmp.npy"), logits)
            path.with_suffix(".tmp.npy").replace(path)
        if kept is not None and not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept.with_suffix(".tmp"))
            kept.with_suffix(".tmp").replace(kept)
        self.cache = torch.from_numpy(logits).to(device)

    def loss(self, net, batch, indices):
        c = self.config
        labels = batch.pop("labels")
        want_h, want_a = c.hidden_weight > 0, c.attention_weight > 0
        out = net(**batch, output_hidden_states=want_h, output_attentions=want_a)
        if self.cache is not None:
            teacher_logits, t_out = self.cache[torch.as_tensor(indices, device=self.cache.device)], None
        else:
            with torch.no_grad():
                t_out = self.teacher(**batch, output_hidden_states=want_h, output_attentions=want_a)
            teacher_logits = t_out.logits
        terms: dict[str, torch.Tensor] = {}
        if c.soft_weight > 0:
            terms["soft"] = soft_cross_entropy(out.logits, teacher_logits, c.temperature, batch["attention_mask"])
        if c.hard_weight > 0:
            # each labelled row weighs 1/batch as in a batch without unlabelled rows; a batch of unlabelled rows
            # only adds nothing
            losses = per_example_loss(out.logits, labels, self.regression)
            if self.labelled is not None:
                losses = losses * (torch.as_tensor(indices, device=losses.device) < self.labelled)
            terms["hard"] = losses.sum() / len(losses)
        mask = batch["attention_mask"]
        if want_h:
            states = [
                (
                    self.extra[j](out.hidden_states[j]) if self.extra is not None else out.hidden_states[j],
                    t_out.hidden_states[tj],
                )
                for j, tj in enumerate(self.layer_map)
            ]
            terms["hidden"] = torch.stack([hidden_mse(s, t, mask) for s, t in states]).mean()
        if want_a:
            pairs = [(out.attentions[i], t_out.attentions[tj - 1]) for i, tj in enumerate(self.layer_map[1:])]
            pairs = [
                (s, t) for s, t in pairs if s is not None and t is not None
            ]  # layers whose attention block was removed have no map
            if pairs:
                terms["attention"] = torch.stack([attention_mse(s, t, mask) for s, t in pairs]).mean()
        weights = {
            "soft": c.soft_weight,
            "hard": c.hard_weight,
            "hidden": c.hidden_weight,
            "attention": c.attention_weight,
        }
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}


def _width(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.dim)
