"""Model loading: heads that do not fit the task are errors, pickle is refused, broken checkpoints are named."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from axformer.errors import AxformerError
from axformer.models.loading import load_model
from axformer.tasks.spec import custom_task, get_task
from tests.conftest import make_tiny_model_dir

SST2 = get_task("sst2")


def test_loads_matching_head(tiny_bert):
    model = load_model(tiny_bert, SST2)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_head_size_mismatch_is_an_error(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m", num_labels=3)
    with pytest.raises(AxformerError, match="has a 3-output head but task SST-2 needs 2; pass --new-head"):
        load_model(d, SST2)


def test_new_head_on_request(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m", num_labels=3)
    model = load_model(d, SST2, new_head=True)
    assert model.classifier.out_features == 2


def test_label_name_mismatch_is_an_error(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m", labels=["spam", "ham"])
    with pytest.raises(
        AxformerError, match=r"predicts labels \['spam', 'ham'\] but task SST-2 has labels \['negative', 'positive'\]"
    ):
        load_model(d, SST2)


def test_base_model_gets_new_head(tmp_path):
    torch.manual_seed(0)
    from tests.conftest import tiny_config

    base = AutoModelForSequenceClassification.from_config(tiny_config("bert")).bert
    base.save_pretrained(tmp_path / "base")
    model = load_model(tmp_path / "base", custom_task(("a", "b", "c"), 1))
    assert model.classifier.out_features == 3
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)


def test_missing_weights(tmp_path, tiny_bert):
    (tiny_bert / "model.safetensors").unlink()
    with pytest.raises(AxformerError, match="has no weights; expected model.safetensors"):
        load_model(tiny_bert, SST2)


def test_pickle_refused_unless_allowed(tmp_path, tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    pkl = tmp_path / "pkl"
    model.save_pretrained(pkl, safe_serialization=False)
    if (pkl / "model.safetensors").exists():  # transformers 5 may always write safetensors
        (pkl / "model.safetensors").unlink()
        torch.save(model.state_dict(), pkl / "pytorch_model.bin")
    with pytest.raises(AxformerError, match="has only pickle weights .* pass --allow-pickle"):
        load_model(pkl, SST2)
    loaded = load_model(pkl, SST2, allow_pickle=True)
    torch.testing.assert_close(loaded.classifier.weight, model.classifier.weight)


def test_corrupt_checkpoint(tiny_bert):
    (tiny_bert / "model.safetensors").write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(AxformerError, match="cannot load the weights of"):
        load_model(tiny_bert, SST2)


def test_missing_directory(tmp_path):
    with pytest.raises(AxformerError, match="model directory .*nope does not exist"):
        load_model(tmp_path / "nope", SST2)


def test_missing_config(tiny_bert):
    (tiny_bert / "config.json").unlink()
    with pytest.raises(AxformerError, match="has no config.json"):
        load_model(tiny_bert, SST2)
