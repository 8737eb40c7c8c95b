"""The held-out split: seeded, stratified, recorded, and refused for different data."""

import numpy as np
import pytest

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData
from axformer.tasks.spec import custom_task
from axformer.tasks.splits import SplitRecord, apply_split, make_heldout_split, partition, text_groups


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    split = Split("train", [(f"text {i}",) for i in range(n)], labels)
    return TaskData(custom_task(("a", "b"), 1), split, {"dev": split.subset(range(10), "dev")})


def test_deterministic_stratified_and_disjoint():
    data = _data()
    r1, r2 = make_heldout_split(data.train, 0.15, 7), make_heldout_split(data.train, 0.15, 7)
    assert r1.heldout_indices == r2.heldout_indices
    assert make_heldout_split(data.train, 0.15, 8).heldout_indices != r1.heldout_indices
    train, held = apply_split(data, r1)
    assert len(held) == 30 and len(train) == 170
    assert not set(train.texts) & set(held.texts)
    assert held.labels.mean() == pytest.approx(data.train.labels.mean(), abs=0.02)
    # stratified: each class is held out in the split's proportion, to within one example
    held_idx = np.asarray(r1.heldout_indices)
    for label in np.unique(data.train.labels):
        in_class = data.train.labels == label
        assert abs(int(in_class[held_idx].sum()) - 0.15 * int(in_class.sum())) <= 1


def test_round_trip_and_refusal_of_other_data():
    data = _data()
    rec = SplitRecord.from_dict(make_heldout_split(data.train).to_dict())
    assert apply_split(data, rec)[1].texts == apply_split(data, make_heldout_split(data.train))[1].texts
    other = _data(seed=1)
    with pytest.raises(AxformerError, match="is not the data the model's held-out split was made from"):
        apply_split(other, rec)


def test_bad_fraction():
    with pytest.raises(AxformerError, match="--heldout-fraction 1.5"):
        make_heldout_split(_data().train, 1.5)


def _phrases_data():
    """Sentences, each with two of its phrases (SST-2's shape), and one repeated text."""
    texts, labels = [], []
    for i in range(60):
        sentence = f"the film number {i} is a quiet and moving story about word{i}"
        texts += [(sentence,), (f"number {i} is a quiet",), (f"moving story about word{i}",)]
        labels += [i % 2, i % 2, 1 - i % 2]
    split = Split("train", texts, np.asarray(labels, dtype=np.int64))
    return TaskData(custom_task(("a", "b"), 1), split, {"dev": split.subset(range(3), "dev")})


def test_phrases_are_held_out_with_their_sentence():
    data = _phrases_data()
    assert text_groups(data.train).tolist() == [i // 3 for i in range(180)]
    record = make_heldout_split(data.train, 0.2, 3)
    assert record.grouped and len(record.heldout_indices) % 3 == 0
    train, held = apply_split(data, record)
    assert abs(len(held) - 36) <= 3

    def inside(a, b):  # a whole-word phrase of b
        return f" {a[0]} " in f" {b[0]} "

    assert not any(inside(h, t) for h in held.texts for t in train.texts)  # no held-out text inside a training one
    assert abs(held.labels.mean() - data.train.labels.mean()) < 0.05  # stratified by class
    first, second = partition(held, 0.5)
    one, other = held.subset(first).texts, held.subset(second).texts
    assert not any(inside(a, b) or inside(b, a) for a in one for b in other)


def test_a_word_inside_another_word_is_no_phrase():
    split = Split("train", [("text 1",), ("text 10",), ("a text 1 b",)], np.zeros(3, dtype=np.int64))
    assert text_groups(split).tolist() == [0, 1, 0]


def test_pairs_that_share_a_text_are_one_group():
    texts = [("a", "b"), ("c", "d"), ("b", "e"), ("f", "a"), ("g", "h")]
    split = Split("train", texts, np.zeros(5, dtype=np.float32))
    assert text_groups(split).tolist() == [0, 1, 0, 0, 2]


def test_records_from_before_grouping_still_load():
    record = make_heldout_split(_data().train).to_dict()
    del record["grouped"]
    assert SplitRecord.from_dict(record).grouped is False


def test_text_shared_too_widely_for_whole_groups_is_split_example_by_example():
    """A toy file where every text is a phrase of the longest: one group, so no whole-group cut exists."""
    texts = [(" ".join(["good"] * (i % 4) + ["movie"]),) for i in range(80)]
    data = TaskData(custom_task(("a", "b"), 1), Split("train", texts, np.arange(80) % 2), {})
    assert len(set(text_groups(data.train).tolist())) == 1
    record = make_heldout_split(data.train, 0.15, 0)
    assert not record.grouped and len(record.heldout_indices) == 12
