"""Recovery for embedding models: the student's sentence embeddings regress the original's.

sentence-transformers' model distillation (``MSELoss``): on every training text, the squared distance between
the student's pooled (normalised) embedding and the teacher's. The teacher's embeddings of the whole training
part are computed once and kept in the run directory, so epochs after the first and resumed runs pay only for
the student. With ``hard_weight`` > 0 the task's own loss on the gold pair scores is added (the cosine of each
pair against its scaled score: ``CosineSimilarityLoss``): on the batch's pairs when it trains on pairs, and,
when it distils on single texts (the training pairs' texts with unlabelled ones: ``--calibration-texts``), on
half a batch of gold-scored training pairs drawn beside every batch of texts.

Why the pairs stay in: distillation alone copies the whole embedding space and a small student cannot; the pairs
aim it at what the task measures. Measured on STS-B (all-MiniLM-L6-v2, a 2-layer student, 96,161 GLUE training
sentences, one epoch): dev Spearman 85.34 by distillation alone, 87.43 with 16 gold pairs beside every batch,
the 6-layer teacher 86.72 (benchmarks/experiments/embedding_students).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from axformer.data.batching import Encoded, collate
from axformer.inference import per_example_loss, run_model

TEACHER_EMBEDDINGS = "teacher_embeddings.npy"


class EmbeddingDistillObjective:
    extra = None
    temporary_files: tuple[str, ...] = (TEACHER_EMBEDDINGS,)

    def __init__(self, teacher: nn.Module, config, gold: Encoded | None = None) -> None:
        """``gold``: gold-scored training pairs (encoded text by text) to train on beside batches of single texts,
        with ``config.hard_weight``."""
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.gold = gold if config.hard_weight > 0 else None
        self.cache: torch.Tensor | None = None
        self.enc: Encoded | None = None

    def describe(self) -> dict:
        out = {"objective": "embedding distillation (MSE)", "hard": self.config.hard_weight}
        if self.gold is not None:
            out["gold_pairs"] = {"pairs": len(self.gold), "per_step": self.gold_per_step}
        return out

    @property
    def gold_per_step(self) -> int:
        """Half a batch of pairs: as many texts as a batch of single texts holds."""
        return max(1, min(len(self.gold), self.config.batch_size // 2))

    def gold_batch(self, indices: np.ndarray, device) -> dict[str, torch.Tensor]:
        """The gold pairs trained on beside the texts at ``indices``: drawn from a seed of those indices, so a
        resumed run draws exactly what the interrupted one would have."""
        rng = np.random.default_rng([self.config.seed, *(int(i) for i in indices)])
        return collate(self.gold, np.sort(rng.choice(len(self.gold), self.gold_per_step, replace=False)), device)

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
        elif self.gold is not None:
            gold = self.gold_batch(indices, emb.device)
            scores = gold.pop("labels")
            terms["hard"] = per_example_loss(net(**gold).logits, scores, True).mean()  # logits: the pairs' cosines
        total = terms["embedding"] + self.config.hard_weight * terms.get("hard", 0.0)
        return total, {k: float(v.detach()) for k, v in terms.items()}
