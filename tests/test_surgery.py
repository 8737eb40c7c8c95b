"""Surgery on tiny random models of every architecture: masks equal physical pruning, exact sizes, reload."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from axformer.errors import AxformerError
from axformer.models.loading import load_model, load_tokenizer, save_model
from axformer.surgery.adapters import get_adapter
from axformer.surgery.components import Component, parse
from axformer.surgery.masks import SoftMask
from axformer.surgery.prune import count_parameters, current_structure, prune
from axformer.surgery.structure import ModelStructure
from tests.conftest import TINY

L, H, F, HID = TINY["layers"], TINY["heads"], TINY["ffn"], TINY["hidden"]
D = HID // H


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 150, (4, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, b):
    with torch.no_grad():
        return model(**b).logits


def random_components(rng: random.Random) -> list[str]:
    """A random mix across layers: heads, neuron groups, single neurons, blocks, sometimes a whole layer."""
    out = []
    for layer in range(L):
        r = rng.random()
        if r < 0.15:
            out.append(f"L{layer}")
            continue
        if r < 0.3:
            out.append(f"L{layer}.attn")
        else:
            out += [f"L{layer}.attn.head{h}" for h in rng.sample(range(H), rng.randint(0, H))]
        if rng.random() < 0.2:
            out.append(f"L{layer}.ffn")
        else:
            out += [f"L{layer}.ffn.group{g}of12" for g in rng.sample(range(12), rng.randint(0, 6))]
            out += [f"L{layer}.ffn.neuron{n}" for n in rng.sample(range(F), rng.randint(0, 3))]
    return out


def expected_parameters(arch: str, full_count: int, structure: ModelStructure) -> int:
    """Independent count, by the layer's formula.

    Post-LN families: h(4*hid*d + 3d) + hid (O bias) for attention, n(2*hid + 1) + hid for the FFN, and two
    LayerNorms that stay. ModernBERT (pre-LN, gated FFN): the same attention, n(3*hid + 2) + hid for the FFN,
    and each block's LayerNorm goes with the block (layer 0 has none before its attention).
    """

    def layer_params(index: int, heads: int, neurons: int) -> int:
        attn = heads * (4 * HID * D + 3 * D) + HID if heads else 0
        if arch == "modernbert":
            attn += 2 * HID if heads and index > 0 else 0
            ffn = neurons * (3 * HID + 2) + HID + 2 * HID if neurons else 0
            return attn + ffn
        ffn = neurons * (2 * HID + 1) + HID if neurons else 0
        return attn + ffn + 4 * HID

    total = full_count - sum(layer_params(i, H, F) for i in range(L))
    return total + sum(
        layer_params(i, len(l.heads), len(l.neurons)) for i, l in enumerate(structure.layers) if l is not None
    )


@pytest.mark.parametrize("seed", range(6))
def test_mask_equals_physical_pruning(tiny_arch_dir, seed):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    original = copy.deepcopy(model)
    full = count_parameters(model)
    b = batch(seed)
    before = logits(model, b)
    removed = random_components(random.Random(seed))
    with SoftMask(model) as mask:
        target = mask.set(removed)
        masked = logits(model, b)
    pruned = copy.deepcopy(model)
    structure = prune(pruned, removed)
    assert structure.to_dict() == target.to_dict()
    torch.testing.assert_close(logits(pruned, b), masked, rtol=0, atol=1e-5)
    assert count_parameters(pruned) == expected_parameters(arch, full, structure)
    # the masks were removed with the context: the model equals its copy taken before masking
    assert count_parameters(model) == full
    torch.testing.assert_close(logits(model, b), before, rtol=0, atol=0)
    assert model.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_masks_switch_on_and_off(tiny_bert):
    model = load_model(tiny_bert).eval()
    b = batch()
    ref = logits(model, b)
    mask = SoftMask(model)
    mask.set(["L1.attn.head2", "L0.ffn"])
    assert (logits(model, b) - ref).abs().max() > 1e-4
    mask.set([])
    torch.testing.assert_close(logits(model, b), ref, rtol=0, atol=0)
    mask.set(["L2"])
    changed = logits(model, b)
    mask.reset()
    torch.testing.assert_close(logits(model, b), ref, rtol=0, atol=0)
    mask.remove()
    assert (changed - ref).abs().max() > 1e-4


def test_block_removal_semantics(tiny_bert):
    """Removing the attention block leaves a = LN1(x), the FFN block y = LN2(a), with the original LayerNorms."""
    model = load_model(tiny_bert).eval()
    original = copy.deepcopy(model)
    prune(model, ["L0.attn", "L1.ffn"])
    x = torch.randn(2, 5, HID)
    with torch.no_grad():
        a, _ = model.bert.encoder.layer[0].attention(x)
        torch.testing.assert_close(a, original.bert.encoder.layer[0].attention.output.LayerNorm(x))
        y = model.bert.encoder.layer[1].output(torch.randn(2, 5, F), x)
        torch.testing.assert_close(y, original.bert.encoder.layer[1].output.LayerNorm(x))
        # and the rest of each layer is the original's: layer 1's attention is unchanged
        mask = torch.zeros(2, 1, 1, 5)
        torch.testing.assert_close(
            model.bert.encoder.layer[1].attention(x, mask)[0], original.bert.encoder.layer[1].attention(x, mask)[0]
        )


def test_layer_removal_is_identity(tiny_bert):
    model = load_model(tiny_bert).eval()
    ref = copy.deepcopy(model)
    prune(model, ["L1"])
    assert len(model.bert.encoder.layer) == L - 1 and model.config.num_hidden_layers == L - 1
    x = torch.randn(2, 6, HID)
    mask = torch.zeros(2, 1, 1, 6)
    with torch.no_grad():
        y_ref = ref.bert.encoder.layer[2](ref.bert.encoder.layer[0](x, mask), mask)
        y = model.bert.encoder.layer[1](model.bert.encoder.layer[0](x, mask), mask)
    torch.testing.assert_close(y, y_ref)


def test_incremental_pruning_equals_one_shot(tiny_arch_dir):
    arch, path = tiny_arch_dir
    a, b = load_model(path).eval(), load_model(path).eval()
    first, second = ["L0.attn.head1", "L2.ffn.group3of12"], ["L0.attn.head3", "L1", "L2.ffn.neuron0"]
    prune(a, first)
    prune(a, second)
    prune(b, first + second)
    assert current_structure(a).to_dict() == current_structure(b).to_dict()
    torch.testing.assert_close(logits(a, batch()), logits(b, batch()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_save_reload_round_trip_is_exact(tiny_arch_dir, tmp_path, seed):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    prune(model, random_components(random.Random(100 + seed)))
    save_model(model, load_tokenizer(path), tmp_path / "pruned")
    again = load_model(tmp_path / "pruned")
    torch.testing.assert_close(logits(again, batch()), logits(model, batch()), rtol=0, atol=0)
    assert count_parameters(again) == count_parameters(model)
    assert current_structure(again).to_dict() == current_structure(model).to_dict()


def test_stock_structure_loads_in_plain_transformers(tiny_arch_dir, tmp_path):
    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    # whole layer dropped and the same neuron groups removed in every layer: a stock config can express it
    prune(model, ["L1"] + [f"L{l}.ffn.group{g}of12" for l in range(L) for g in (0, 5, 7)])
    assert current_structure(model).is_stock()
    save_model(model, None, tmp_path / "stock")
    cfg = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert cfg["model_type"] == model.config.model_type
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock").eval()
    torch.testing.assert_close(logits(plain, batch()), logits(model, batch()), rtol=0, atol=1e-6)


def test_heterogeneous_structure_loads_through_transformers_auto_classes(tiny_arch_dir, tmp_path):
    """Per-layer head counts and widths are beyond a stock config: the directory says model_type axformer-pruned,
    and once axformer is imported (it registers that type) the Auto classes and pipeline() rebuild it exactly,
    without trust_remote_code."""
    from transformers import pipeline

    import axformer  # noqa: F401

    arch, path = tiny_arch_dir
    model = load_model(path).eval()
    prune(model, ["L0.attn.head1", "L2.ffn.group1of12"])
    save_model(model, load_tokenizer(path), tmp_path / "het")
    assert json.loads((tmp_path / "het" / "config.json").read_text())["model_type"] == "axformer-pruned"
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "het").eval()
    assert type(auto) is type(model)  # the family's own class, with smaller modules
    torch.testing.assert_close(logits(auto, batch()), logits(model, batch()), rtol=0, atol=0)
    classify = pipeline("text-classification", model=str(tmp_path / "het"), device="cpu")
    out = classify(["good movie", "bad film"])
    assert len(out) == 2 and all(r["label"] in model.config.id2label.values() for r in out)


def test_component_names():
    for name in ("L3", "L3.attn", "L3.ffn", "L3.attn.head5", "L3.ffn.group7of12", "L3.ffn.neuron123"):
        assert parse(name).name == name
    assert parse("L2.attn.head1") == Component(2, "head", 1)
    for bad in ("L3.attn.group1of2", "layer3", "L1.ffn.group2", "L1.attn.head1of4"):
        with pytest.raises(AxformerError, match="component"):
            parse(bad)


def test_out_of_range_components(tiny_bert):
    model = load_model(tiny_bert)
    with pytest.raises(AxformerError, match="layers 0..2"):
        prune(model, ["L7.attn"])
    with pytest.raises(AxformerError, match="heads 0..3"):
        prune(model, ["L0.attn.head9"])


def test_unsupported_architecture():
    with pytest.raises(
        AxformerError, match=r"architecture 'gpt2' is not supported .*supported: bert, .*distilbert.*mpnet"
    ):
        get_adapter("gpt2")


def test_structure_flops_and_stock_rules():
    s = ModelStructure.full(6, 12, 32, 1536, 384)
    full = s.flops_per_token(128)
    assert full == 2 * 6 * (4 * 384 * 384 + 2 * 128 * 384 + 2 * 384 * 1536)
    half_ffn = s.removed([f"L{l}.ffn.group{g}of12" for l in range(6) for g in range(6)])
    assert half_ffn.is_stock() and half_ffn.flops_per_token(128) == full - 2 * 6 * (
        2 * 384 * 768
    )  # up and down projections
    assert not s.removed(["L0.attn.head0"]).is_stock()
    assert ModelStructure.from_dict(half_ffn.to_dict()).to_dict() == half_ffn.to_dict()


def test_deberta_v2_with_separate_position_projections_and_conv(tmp_path):
    """DeBERTa-v2 with its own position projections (sliced per head) and a first-layer convolution."""
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config("deberta-v2")
    cfg.share_att_key, cfg.conv_kernel_size = False, 3
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    removed = ["L0.attn.head1", "L1.attn.head0", "L1.attn.head3", "L2.ffn.group4of12"]
    with SoftMask(model) as mask:
        mask.set(removed)
        masked = logits(model, batch())
    pruned = copy.deepcopy(model)
    prune(pruned, removed)
    assert pruned.deberta.encoder.layer[1].attention.self.pos_key_proj.out_features == 2 * D
    torch.testing.assert_close(logits(pruned, batch()), masked, rtol=0, atol=1e-5)
    with pytest.raises(AxformerError, match="layer L0 cannot be removed"):
        prune(pruned, ["L0"])


def test_modernbert_layer_types_follow_dropped_layers(tmp_path):
    """Dropping the global first layer: the sliding-window types move with their layers, and the new first layer
    keeps its attention LayerNorm, which a stock config cannot express (saved as axformer-pruned, reloads exactly)."""
    from tests.conftest import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path / "mb", "modernbert")
    model = load_model(path).eval()
    types = list(model.config.layer_types)
    assert types[0] == "full_attention" and set(types[1:]) == {"sliding_attention"}
    with SoftMask(model) as mask:
        mask.set(["L0"])
        masked = logits(model, batch())
    prune(model, ["L0"])
    assert model.config.layer_types == types[1:]
    torch.testing.assert_close(logits(model, batch()), masked, rtol=0, atol=1e-5)
    assert current_structure(model).is_stock() and not get_adapter(model).is_stock(current_structure(model))
    save_model(model, None, tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["model_type"] == "axformer-pruned"
    again = load_model(tmp_path / "pruned")
    torch.testing.assert_close(logits(again, batch()), logits(model, batch()), rtol=0, atol=0)
