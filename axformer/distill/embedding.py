"""Recovery for embedding models: the student's sentence embeddings regress the original's.

sentence-transformers' model distillation (``MSELoss``): on every training text, the squared distance between
the student's pooled (normalised) embedding and the teacher's. The teacher's embeddings of the whole training
part are computed once and kept in the run directory, so epochs after the first and resumed runs pay only for
the student. With ``hard_weight`` > 0 the task's own loss on the gold pair scores is added (the cosine of each
pair against its scaled score: ``CosineSimilarityLoss``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from axformer.data.batching import Encoded
from axformer.inference import per_example_loss, run_model

TEACHER_EMBEDDINGS = "teacher_embeddings.npy"


class EmbeddingDistillObjective:
    extra = None
    temporary_files: tuple[str, ...] = (TEACHER_EMBEDDINGS,)

    def __init__(self, teacher: nn.Module, config) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.cache: torch.Tensor | None = None
        self.enc: Encoded | None = None

    def describe(self) -> dict:
        return {"objective": "embedding distillation (MSE)", "hard": self.config.hard_weight}

    def prepare(self, work: Path, enc_train: Encoded, device: torch.device) -> None:
        self.enc = enc_train
        path = work / TEACHER_EMBEDDINGS
        if path.exists():
            emb = np.load(path)
        else:
            emb = run_model(
                self.teacher,
                enc_train.ungrouped(),
                True,
                self.config.eval_batch_size,
                device,
                progress="teacher embeddings",
                with_loss=False,
            ).logits
            np.save(path.with_suffix(".tmp.npy"), emb)
            path.with_suffix(".tmp.npy").replace(path)
        self.cache = torch.from_numpy(emb).to(device)

    def loss(self, net, batch, indices):
        labels = batch.pop("labels")
        group = batch.pop("group_size", None)
        emb = net(**batch).logits  # one row per text
        rows = self.enc.rows(indices)  # the batch's sequences, in collate's order
        target = self.cache[torch.as_tensor(rows, device=self.cache.device)]
        terms = {"embedding": ((emb.float() - target) ** 2).sum(-1).mean()}
        if self.config.hard_weight > 0 and group is not None:
            pairs = emb.view(-1, int(group), emb.shape[-1])
            cos = nn.functional.cosine_similarity(pairs[:, 0], pairs[:, 1], dim=-1).unsqueeze(-1)
            terms["hard"] = per_example_loss(cos, labels, True).mean()
        total = terms["embedding"] + self.config.hard_weight * terms.get("hard", 0.0)
        return total, {k: float(v.detach()) for k, v in terms.items()}
