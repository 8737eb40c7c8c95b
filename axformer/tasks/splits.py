"""The held-out validation split carved from the training set (the AxFormer protocol).

Every selection and search decision uses this split; the official dev set only
reports. The split is recorded with each model (indices plus a fingerprint of
the training data) so that later stages reuse exactly the same examples, and a
change of the underlying data is detected instead of silently mixing splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
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
    # examples that share text (or whose text is a phrase of another's) were held out together; records written
    # before session 19 have no such field and were split example by example
    grouped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SplitRecord:
        optional = {"grouped"}
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k not in optional})
        except KeyError as exc:
            raise AxformerError(f"split record is missing field {exc.args[0]!r}") from None


def make_heldout_split(train: Split, fraction: float = 0.15, seed: int = 42, stratify: bool = True) -> SplitRecord:
    """Seeded held-out indices into ``train``: whole groups of examples that share text (``text_groups``),
    stratified by class where every group is one example.

    Why groups: SST-2's training set is ~6,900 sentences and the 60,000 phrases of their parse trees. Split
    example by example, 98% of the held-out sentences of 15+ words hold a 5+-word phrase the model was trained
    on (``benchmarks/make_decision_sample.py``), so a certificate on them measures memory, not the unseen
    sentences of the dev set; the same holds for QA questions on one article.
    """
    if not 0.0 < fraction < 1.0:
        raise AxformerError(f"--heldout-fraction {fraction}; expected a value between 0 and 1")
    n = len(train)
    n_held = int(round(n * fraction))
    if n_held < 1 or n - n_held < 1:
        raise AxformerError(
            f"training split has {n} examples: too few to hold out {fraction:.0%} and keep some for training"
        )
    held, stratified, grouped = _cut(train, n_held, fraction, seed, stratify)
    return SplitRecord(
        fraction=fraction,
        seed=seed,
        stratified=stratified,
        num_train_total=n,
        train_fingerprint=train.fingerprint(),
        heldout_indices=sorted(int(i) for i in held),
        grouped=grouped,
    )


def _cut(split: Split, n_second: int, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, bool, bool]:
    """About ``n_second`` positions of ``split`` that share no group with the rest, (positions, stratified,
    grouped)."""
    n = len(split)
    if split.is_qa:  # questions on one context are too alike to be split between the parts: whole articles
        return _heldout_articles(split, fraction, seed), False, True
    groups = text_groups(split)
    if len(np.unique(groups)) < n:
        second = _whole_groups(groups, split.labels, n_second, seed)
        if 0.5 * n_second <= len(second) <= min(1.5 * n_second, n - 1):
            return second, stratify and split.labels.dtype.kind in "iu", True
        # a few groups hold most examples (a toy file of "movie", "good movie", ...): no whole-group cut comes
        # near the size asked for, so the cut is example by example, and the record says so (grouped: false)
    labels = split.labels
    strat = labels if stratify and labels.dtype.kind in "iu" and np.min(np.bincount(labels)) >= 2 else None
    _, second = train_test_split(np.arange(n), test_size=n_second, random_state=seed, stratify=strat)
    return np.asarray(second), strat is not None, False


def text_groups(split: Split) -> np.ndarray:
    """Per example, a group number: examples in one group share text and must sit on the same side of a split.

    Single texts: a text that is a whole-word phrase of a longer text joins the longest one that holds it
    (SST-2's phrases join their sentence). Pairs: examples that share either text (RTE's premises, STS-B's
    and MRPC's repeated sentences). Extractive QA: the article.
    """
    if split.is_qa:
        return article_groups(split)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(split)
    if split.texts and len(split.texts[0]) == 1:
        edges = _phrase_holders([t[0] for t in split.texts])
    else:  # each example joins the first example that has the same text in either field
        first: dict[str, int] = {}
        edges = [(i, first.setdefault(field, i)) for i, text in enumerate(split.texts) for field in text]
    rows, cols = (np.asarray(x, dtype=np.int64) for x in zip(*edges)) if edges else (np.zeros(0, int),) * 2
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, groups = connected_components(graph, directed=False)
    return groups.astype(np.int64)


def _phrase_holders(texts: list[str]) -> list[tuple[int, int]]:
    """(i, j) for each text i that is a whole-word phrase of a longer (or an identical, earlier) text j, j the
    longest such text. Candidates are the texts holding i's rarest word, so the cost is the sum of those
    words' frequencies (SST-2's 67k texts: ~2.4M substring checks, a few seconds)."""
    words = [t.split() for t in texts]
    frequency = Counter(w for ws in words for w in set(ws))
    holding: dict[str, list[int]] = defaultdict(list)
    for i, ws in enumerate(words):
        for w in set(ws):
            holding[w].append(i)
    padded = [f" {' '.join(ws)} " for ws in words]
    pairs = []
    for i, ws in enumerate(words):
        if not ws:
            continue
        best = -1
        for j in holding[min(set(ws), key=frequency.__getitem__)]:
            longer = len(padded[j]) > len(padded[i]) or (j < i and padded[j] == padded[i])
            if longer and padded[i] in padded[j] and (best < 0 or len(padded[j]) > len(padded[best])):
                best = j
        if best >= 0:
            pairs.append((i, best))
    return pairs


def _whole_groups(groups: np.ndarray, labels: np.ndarray, n_second: int, seed: int) -> np.ndarray:
    """Seeded whole groups holding about ``n_second`` examples, stratified for classification: groups are
    visited in random order and one is taken when it brings the per-class counts closer to ``n_second`` times
    each class's share (one count for regression)."""
    if labels.dtype.kind in "iu" and len(labels) and int(labels.min()) >= 0:
        per_class = np.eye(int(labels.max()) + 1, dtype=np.int64)[labels]
    else:
        per_class = np.ones((len(groups), 1), dtype=np.int64)
    counts = np.zeros((int(groups.max()) + 1, per_class.shape[1]), dtype=np.int64)
    np.add.at(counts, groups, per_class)
    target = per_class.sum(axis=0) * (n_second / len(groups))
    taken = np.zeros(per_class.shape[1])
    chosen = np.zeros(len(counts), dtype=bool)
    for g in np.random.default_rng(seed).permutation(len(counts)):
        if np.abs(target - taken - counts[g]).sum() < np.abs(target - taken).sum():
            taken += counts[g]
            chosen[g] = True
    return np.nonzero(chosen[groups])[0]


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
    decision sees; examples that share text stay on one side, as in the held-out split.
    """
    n = len(split)
    n_second = int(round(n * fraction))
    if n_second < 1 or n - n_second < 1:
        raise AxformerError(
            f"the held-out split has {n} examples: too few to keep {fraction:.0%} of them for the "
            "certificate; lower --confirm-fraction (0 turns the certificate off) or hold out more data"
        )
    second, _, _ = _cut(split, n_second, fraction, seed, stratify=True)
    second = np.sort(second)
    return np.setdiff1d(np.arange(n), second), second
