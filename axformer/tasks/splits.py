"""The held-out validation split carved from the training set (the AxFormer protocol).

Every selection and search decision uses this split; the official dev set only
reports. The split is recorded with each model (indices plus a fingerprint of
the training data) so that later stages reuse exactly the same examples, and a
change of the underlying data is detected instead of silently mixing splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData


@dataclass
class SplitRecord:
    fraction: float
    seed: int
    stratified: bool
    num_train_total: int
    train_fingerprint: str
    heldout_indices: list[int]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SplitRecord:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise AxformerError(f"split record is missing field {exc.args[0]!r}") from None


def make_heldout_split(train: Split, fraction: float = 0.15, seed: int = 42, stratify: bool = True) -> SplitRecord:
    """Seeded (and, for classification, stratified) held-out indices into ``train``."""
    if not 0.0 < fraction < 1.0:
        raise AxformerError(f"--heldout-fraction {fraction}; expected a value between 0 and 1")
    n = len(train)
    n_held = int(round(n * fraction))
    if n_held < 1 or n - n_held < 1:
        raise AxformerError(
            f"training split has {n} examples: too few to hold out {fraction:.0%} and keep some for training"
        )
    labels = train.labels
    if train.is_qa:  # questions on one context are too alike to be split between the parts: whole articles
        held = _heldout_articles(train, fraction, seed)
        strat = None
    else:
        strat = labels if stratify and labels.dtype.kind in "iu" and np.min(np.bincount(labels)) >= 2 else None
        _, held = train_test_split(np.arange(n), test_size=n_held, random_state=seed, stratify=strat)
    return SplitRecord(
        fraction=fraction,
        seed=seed,
        stratified=strat is not None,
        num_train_total=n,
        train_fingerprint=train.fingerprint(),
        heldout_indices=sorted(int(i) for i in held),
    )


def article_groups(split: Split) -> np.ndarray:
    """Per question, its article's number (the article, or the context where a file has no titles)."""
    keys: dict[str, int] = {}
    return np.asarray([keys.setdefault(e.article or e.context, len(keys)) for e in split.labels], dtype=np.int64)


def _heldout_articles(train: Split, fraction: float, seed: int) -> np.ndarray:
    """Seeded whole articles holding about ``fraction`` of the questions."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = article_groups(train)
    if groups.max() < 1:
        raise AxformerError(
            "the training questions all share one article (or context): a held-out split by article needs at "
            "least two; give the file several articles (titles) or contexts"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(splitter.split(np.arange(len(train)), groups=groups))
    return held


def apply_split(data: TaskData, record: SplitRecord) -> tuple[Split, Split]:
    """(training part, held-out part) of ``data.train`` according to ``record``.

    Refuses data whose training set differs from the one the split was made on.
    """
    train = data.train
    if len(train) != record.num_train_total or train.fingerprint() != record.train_fingerprint:
        raise AxformerError(
            f"the training data of {data.spec.display_name} ({len(train)} examples) is not the data "
            "the model's held-out split "
            f"was made from ({record.num_train_total} examples, fingerprint "
            f"{record.train_fingerprint}); point --data-dir at the original data"
        )
    held = np.asarray(record.heldout_indices, dtype=np.int64)
    mask = np.ones(len(train), dtype=bool)
    mask[held] = False
    return train.subset(np.nonzero(mask)[0], "train"), train.subset(held, "heldout")


def subsample(split: Split, max_examples: int | None, seed: int = 0) -> tuple[Split, np.ndarray]:
    """At most ``max_examples`` of ``split`` (seeded, stratified for classification) and their indices.

    Scoring hundreds of candidates on a CPU needs a bounded split; stratifying
    keeps the class balance, so the metric stays comparable to the full split's.
    """
    n = len(split)
    if not max_examples or max_examples >= n:
        return split, np.arange(n)
    labels = split.labels
    strat = labels if labels.dtype.kind in "iu" and np.min(np.bincount(labels)) >= 2 else None
    try:
        keep, _ = train_test_split(np.arange(n), train_size=max_examples, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to stratify at this size
        keep, _ = train_test_split(np.arange(n), train_size=max_examples, random_state=seed)
    keep = np.sort(keep)
    return split.subset(keep, split.name), keep


def partition(split: Split, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``split`` cut in two, seeded and stratified for classification: (the rest, ``fraction``).

    The search decides on the first part and is certified on the second (the confirmation part), which no
    decision sees.
    """
    n = len(split)
    n_second = int(round(n * fraction))
    if n_second < 1 or n - n_second < 1:
        raise AxformerError(
            f"the held-out split has {n} examples: too few to keep {fraction:.0%} of them for the "
            "certificate; lower --confirm-fraction (0 turns the certificate off) or hold out more data"
        )
    if split.is_qa:  # whole articles on each side, as in the held-out split
        second = _heldout_articles(split, fraction, seed)
        return np.setdiff1d(np.arange(n), second), np.sort(second)
    labels = split.labels
    strat = labels if labels.dtype.kind in "iu" and np.min(np.bincount(labels)) >= 2 else None
    first, second = train_test_split(np.arange(n), test_size=n_second, random_state=seed, stratify=strat)
    return np.sort(first), np.sort(second)
