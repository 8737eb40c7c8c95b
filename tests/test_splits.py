"""The held-out split: seeded, stratified, recorded, and refused for different data."""

import numpy as np
import pytest

from axformer.errors import AxformerError
from axformer.tasks.data import Split, TaskData
from axformer.tasks.spec import custom_task
from axformer.tasks.splits import SplitRecord, apply_split, make_heldout_split


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
