"""Vocabulary pruning: the pruned tokenizer gives the original ids (mapped) on kept texts, for every family; the
sliced model gives the original logits on them."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from axformer.errors import AxformerError
from axformer.models.loading import load_model
from axformer.surgery.vocabulary import (
    coverage,
    kept_ids_of,
    nearest_aliases,
    plan_vocabulary,
    prune_model_vocabulary,
    prune_tokenizer,
    pruned_tokenizer_json,
    trim_positions,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy afternoon with a good book and strong coffee",
    "transformers compress well when the task is narrow",
    "pruning the vocabulary keeps what the task uses",
    "unbelievable results, remarkably consistent measurements!",
    "the movie was surprisingly moving and beautifully shot",
    "numbers like 1234 and 56.78 appear in financial news",
] * 3
KEPT_TEXTS = [("the lazy dog jumps",), ("a good movie",), ("pruning keeps the task",)]
TRAIN = [("the quick brown fox jumps over the lazy dog",), ("a good movie was moving",), ("pruning keeps the task",)]
NEW = [("zebras quizzically vex jovial wizards",), ("the fox reads 999 books",)]


def _wrap(tok: Tokenizer, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def byte_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )  # fmt: skip
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return _wrap(tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "<unk>", "[CLS]"], unk_token="<unk>")
    )
    return _wrap(tok, unk_token="<unk>", pad_token="<pad>")


def wordlevel() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]")


FAMILIES = {"WordPiece": wordpiece, "BPE": byte_bpe, "Unigram": unigram, "WordLevel": wordlevel}


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_tokenizer_gives_the_original_ids_on_kept_texts(family, tmp_path):
    tok = FAMILIES[family]()
    plan = plan_vocabulary(tok, TRAIN)
    assert plan.family == family
    assert len(plan.kept) < len(tok), "nothing was pruned"
    pruned = prune_tokenizer(tok, plan.kept, tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")  # how a user loads the artifact's tokenizer
    new_id = {old: new for new, old in enumerate(plan.kept)}
    for t in TRAIN + KEPT_TEXTS:
        want = [new_id[i] for i in tok(*t)["input_ids"]]
        assert pruned(*t)["input_ids"] == want, (family, t)
        assert reloaded(*t)["input_ids"] == want, (family, t)
        assert reloaded.decode(reloaded(*t)["input_ids"], skip_special_tokens=True) == tok.decode(
            tok(*t)["input_ids"], skip_special_tokens=True
        )
    assert kept_ids_of(tok, tmp_path / "tok") == plan.kept  # recorded beside the tokenizer
    with pytest.raises(AxformerError, match="vocabulary.json was pruned from a"):
        kept_ids_of(FAMILIES["WordPiece" if family != "WordPiece" else "BPE"](), tmp_path / "tok")
    # the special tokens keep their meaning under the new numbering
    for name in ("pad_token", "unk_token"):
        if getattr(tok, name, None) is not None:
            assert pruned.convert_ids_to_tokens(getattr(pruned, name + "_id")) == getattr(tok, name)


def test_pair_texts_and_the_post_processor_follow_the_renumbering(tmp_path):
    tok = wordpiece()
    plan = plan_vocabulary(tok, [("the lazy dog", "a good movie")])
    pruned = prune_tokenizer(tok, plan.kept, tmp_path / "tok")
    new_id = {old: new for new, old in enumerate(plan.kept)}
    a = tok("the lazy dog", "a good movie", return_token_type_ids=True)
    b = pruned("the lazy dog", "a good movie", return_token_type_ids=True)
    assert b["input_ids"] == [new_id[i] for i in a["input_ids"]]
    assert b["token_type_ids"] == a["token_type_ids"]
    assert (tmp_path / "tok" / "vocab.txt").read_text().splitlines()[new_id[tok.cls_token_id]] == "[CLS]"


def test_unseen_words_are_respelled_or_unknown_and_counted(tmp_path):
    tok = wordpiece()
    plan = plan_vocabulary(tok, TRAIN)
    pruned = prune_tokenizer(tok, plan.kept, tmp_path / "tok")
    cov = coverage(tok, pruned, plan.kept, NEW)
    assert cov.texts == 2 and cov.tokens > 0
    assert cov.outside > 0 and cov.texts_changed >= 1
    with_chars = plan_vocabulary(tok, TRAIN, keep_characters=True)
    assert with_chars.characters > 0 and len(with_chars.kept) > len(plan.kept)
    pruned_c = prune_tokenizer(tok, with_chars.kept, tmp_path / "tok-c")
    assert coverage(tok, pruned_c, with_chars.kept, NEW).unknown_after <= cov.unknown_after


def test_bpe_keeps_the_intermediate_tokens_of_its_merges():
    tok = byte_bpe()
    plan = plan_vocabulary(tok, [("unbelievable",)])
    spec = json.loads(pruned_tokenizer_json(tok, plan.kept))
    vocab = spec["model"]["vocab"]
    for merge in spec["model"]["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        assert a in vocab and b in vocab and a + b in vocab
    assert plan.merge_closure > 0


def test_an_unsupported_family_is_refused():
    tok = wordpiece()
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["model"] = {"type": "Exotic"}

    class Fake:
        backend_tokenizer = type("B", (), {"to_str": staticmethod(lambda: json.dumps(spec))})()

    with pytest.raises(AxformerError, match="tokenizer families"):
        plan_vocabulary(Fake(), TRAIN)


def test_a_vocabulary_pruned_model_gives_the_original_logits(tiny_arch_dir, tmp_path):
    from axformer.models.loading import load_tokenizer, save_model

    arch, path = tiny_arch_dir
    tok = load_tokenizer(path)
    net = load_model(path).eval()
    texts = [("the cat sat on the mat",), ("a red car",)]
    plan = plan_vocabulary(tok, texts)
    batch = tok([t[0] for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = net(**batch).logits
    prune_model_vocabulary(net, plan.kept)
    out = tmp_path / "pruned"
    pruned = prune_tokenizer(tok, plan.kept, out)
    save_model(net, pruned, out)
    again = load_model(out).eval()
    assert again.get_input_embeddings().num_embeddings == len(plan.kept) < tok.vocab_size
    new_batch = pruned([t[0] for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = again(**new_batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_trimmed_positions_keep_the_logits_of_short_inputs(tiny_arch_dir):
    arch, path = tiny_arch_dir
    net = load_model(path).eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        want = net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    rows = trim_positions(net, 16)
    if rows is None:
        assert arch in ("deberta-v2", "modernbert")  # no absolute position table
        return
    assert rows < 64 and net.config.max_position_embeddings == rows
    with torch.no_grad():
        got = net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_unseen_tokens_share_the_id_of_their_nearest_kept_neighbour(family, tmp_path):
    """unseen=nearest: every text, unseen words included, is segmented exactly as before; a removed token's id is
    the new id of the kept token with the closest embedding. Unigram cannot share ids and is re-spelled."""
    tok = FAMILIES[family]()
    plan = plan_vocabulary(tok, TRAIN)
    torch.manual_seed(0)
    table = torch.randn(len(tok), 16)
    aliases = nearest_aliases(table, plan.kept)
    assert set(aliases) == set(range(len(tok))) - set(plan.kept)
    kept_rows = torch.nn.functional.normalize(table[plan.kept], dim=-1)
    some = next(iter(aliases))
    assert aliases[some] == int((kept_rows @ torch.nn.functional.normalize(table[some], dim=0)).argmax())
    prune_tokenizer(tok, plan.kept, tmp_path / "tok", aliases=aliases)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    new_id = {old: new for new, old in enumerate(plan.kept)} | aliases
    for t in TRAIN + NEW:
        if family == "Unigram":
            continue
        assert reloaded(*t)["input_ids"] == [new_id[i] for i in tok(*t)["input_ids"]], (family, t)
    record = json.loads((tmp_path / "tok" / "vocabulary.json").read_text())
    assert record["kept"] == plan.kept and record["aliases"] == (0 if family == "Unigram" else len(aliases))
    assert max(reloaded(*NEW[0])["input_ids"]) < len(plan.kept)  # every id has a row in the sliced embedding
    if family == "WordPiece":  # the slow tokenizer's vocab.txt lists the kept tokens, one per id
        lines = (tmp_path / "tok" / "vocab.txt").read_text().splitlines()
        assert len(lines) == len(plan.kept) and lines == tok.convert_ids_to_tokens(plan.kept)
