"""Compressing an embedding model with unlabelled texts only (``--task none --calibration-texts FILE``).

Without labels the only promise one can make is fidelity: the compressed model's embeddings stay close to the
original's. So the task's gold labels *are* the original's embeddings of the user's texts, its per-example loss
is ``1 - cosine`` and its metrics are the mean cosine (``cosine``, in points: 100 is the original) and its 5th
percentile over texts (``cosine_p5``). Everything downstream (held-out split, search, certificate, distillation,
export check, benchmark) then runs unchanged. A seeded tenth of the texts is held back as the "dev" split: like
a dev set, no decision sees it, and it reports the fidelity on texts nothing was tuned on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData
from axformer.tasks.spec import TaskSpec

TEXTS_TASK = "none"  # what --task says when there are no labels
DEV_FRACTION = 0.1


def texts_task(
    path: str | os.PathLike,
    model: str | os.PathLike,
    columns: tuple[str, ...] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> TaskData:
    """The fidelity task over the texts in ``path`` (one per line, or a column), labelled by ``model``'s
    embeddings (``model`` is the original: every later stage reloads its embeddings from it)."""
    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.models.loading import load_embedder, load_tokenizer
    from axformer.tasks.calibration import load_calibration_texts
    from axformer.utils.device import resolve_device

    device = str(resolve_device(device))
    texts = list(dict.fromkeys(load_calibration_texts(path, 1, columns)))
    if len(texts) < 20:
        raise AxformerError(
            f"--calibration-texts {path} holds {len(texts)} distinct texts; fidelity-only compression needs at least "
            "20 (a held-out part decides, a tenth is held back to report)"
        )
    net = load_embedder(str(model), device=device)
    tokenizer = load_tokenizer(model)
    max_len = net.layout.max_seq_length or 128
    unlabelled = Split("texts", texts, np.zeros(len(texts), np.float32))
    emb = run_model(net, encode(tokenizer, unlabelled, max_len), True, 64, device, with_loss=False).logits
    order = np.random.default_rng(seed).permutation(len(texts))
    n_dev = max(1, int(round(DEV_FRACTION * len(texts))))
    dev_idx, train_idx = np.sort(order[:n_dev]), np.sort(order[n_dev:])
    labelled = Split("texts", texts, emb.astype(np.float32))
    spec = TaskSpec(
        name=TEXTS_TASK,
        display_name=f"fidelity on {Path(path).name}",
        benchmark="custom",
        num_text_fields=1,
        label_names=None,
        metrics=("cosine", "cosine_p5"),
        main_metric="cosine",
        extra={"embedding": "fidelity"},
    )
    source = {
        "kind": "texts",
        "file": str(Path(path).resolve()),
        "columns": list(columns) if columns else None,
        "teacher": str(Path(str(model)).resolve()) if Path(str(model)).exists() else str(model),
        "seed": seed,
    }
    return TaskData(spec, labelled.subset(train_idx, "train"), {"dev": labelled.subset(dev_idx, "dev")}, source)


def texts_task_from_record(source: dict, device: str = "cpu") -> TaskData:
    return texts_task(source["file"], source["teacher"], tuple(source["columns"] or ()) or None, source["seed"], device)
