"""More distillation input where the task has little: the parts of long training texts the model never reads,
and perturbed copies of the training texts.

A model run at ``max_seq_length`` tokens sees only the start of a long text (a BBC article is ~500 tokens, the
demo runs at 128). The later windows of the same texts are in-domain inputs no decision or evaluation uses, and
distillation needs no labels: the teacher's outputs on them are the targets. Windows come from the fast
tokenizer's overflow (the tokenizer's own truncation, decoded back to text), so they split where the tokenizer
would. Pair tasks (two text fields) get none: a later window of one field has no partner.

Perturbed copies (``perturbed_copies``) follow TinyBERT's and EDA's observation that a student learns the
teacher's function better from inputs *near* the training texts than from the same texts again: each word is,
with a small probability, replaced by a word drawn from the training texts' own word distribution (so the
replacements stay in-domain and in the tokenizer's vocabulary), deleted, or swapped with its neighbour. The
teacher labels the copies; no gold label is assumed to survive the perturbation (a gold-label loss skips them).
Copies that coincide with a text the caller excludes (every dev and held-out text: they report, decide and
certify) or with a training text are dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from axformer.errors import AxformerError

# where a perturbed copy's replacement words come from: a draw from the training texts' word frequencies, or one
# of the word's nearest tokens in the model's input-embedding table
AUGMENT_WORDS = ("unigram", "neighbours")


def check_augment_words(value: str, option: str) -> None:
    if value not in AUGMENT_WORDS:
        raise AxformerError(f"{option} {value!r}; expected one of {', '.join(AUGMENT_WORDS)}")


def input_word_table(model) -> np.ndarray:
    """The model's input-embedding table (vocabulary x hidden), from its safetensors file when it has one (every
    encoder axformer handles names it ``...word_embeddings.weight``), otherwise from the loaded model."""
    from safetensors import safe_open

    files = sorted(Path(model).glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), "np") as f:
            name = next((k for k in f.keys() if k.endswith("word_embeddings.weight")), None)  # noqa: SIM118
            if name is not None:
                return f.get_tensor(name).astype(np.float32)
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model)).get_input_embeddings().weight.detach().float().numpy()


def later_windows(tokenizer, texts: list[tuple[str, ...]], max_length: int, per_text: int) -> list[tuple[str, ...]]:
    """Up to ``per_text`` windows after the first of every single-field text longer than ``max_length`` tokens."""
    if per_text <= 0 or not texts or len(texts[0]) != 1:
        return []
    out: list[tuple[str, ...]] = []
    enc = tokenizer(
        [t[0] for t in texts], truncation=True, max_length=max_length, return_overflowing_tokens=True, stride=0
    )
    seen: dict[int, int] = {}
    for ids, source in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
        seen[source] = seen.get(source, 0) + 1
        if 1 < seen[source] <= per_text + 1:
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if text:
                out.append((text,))
    return out


def embedding_neighbours(
    tokenizer, word_embeddings: np.ndarray, texts: list[tuple[str, ...]], k: int = 8
) -> dict[str, list[str]]:
    """For every word of ``texts`` that the tokenizer keeps as one token, the ``k`` whole-word tokens nearest to
    it by cosine in the model's own input-embedding table (TinyBERT replaces such words by their GloVe
    neighbours; the model's table needs no download and knows its vocabulary). Case follows the text's word
    where the tokenizer lower-cases. Measured on WordPiece vocabularies (BERT, MiniLM); a byte-level BPE one
    (RoBERTa) marks word starts with a prefix, so its bare pieces are looked up and fewer words find
    neighbours (those are then replaced by a frequency draw)."""
    vocab = tokenizer.get_vocab()
    lower = bool(getattr(tokenizer, "do_lower_case", False)) or bool(
        tokenizer("A", add_special_tokens=False)["input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]
    )
    special = set(tokenizer.all_special_tokens)
    candidates = [t for t, i in vocab.items() if t.isalpha() and t not in special and i < len(word_embeddings)]
    cand_ids = np.array([vocab[t] for t in candidates])
    table = word_embeddings / np.maximum(np.linalg.norm(word_embeddings, axis=1, keepdims=True), 1e-12)
    words = sorted({w for row in texts for field in row for w in field.split() if w.isalpha()})
    keys = [w.lower() if lower else w for w in words]
    known = [(w, vocab[key]) for w, key in zip(words, keys) if key in vocab]
    out: dict[str, list[str]] = {}
    for start in range(0, len(known), 2048):
        chunk = known[start : start + 2048]
        sims = table[[i for _, i in chunk]] @ table[cand_ids].T
        for row, (word, wid) in zip(sims, chunk):
            row[cand_ids == wid] = -np.inf
            best = np.argpartition(-row, k)[:k]
            names = [candidates[j] for j in best[np.argsort(-row[best])]]
            out[word] = [n.capitalize() if word[0].isupper() else n for n in names]
    return out


def perturbed_copies(
    texts: list[tuple[str, ...]],
    copies: int,
    rate: float = 0.15,
    seed: int = 0,
    exclude: set[tuple[str, ...]] | frozenset = frozenset(),
    min_words: int = 0,
    neighbours: dict[str, list[str]] | None = None,
) -> list[tuple[str, ...]]:
    """``copies`` perturbed versions of every text of at least ``min_words`` words (a pair's fields counted
    together; every field perturbed on its own), less those in ``exclude`` or among ``texts``, deduplicated, in a
    seeded order that does not depend on ``exclude``. Replacement words are drawn from all of ``texts``.

    ``min_words`` aims the extra input at the texts a model serves when the training set is mostly shorter
    (SST-2 trains on phrases, median 7 words, and is judged on sentences, median 19). ``neighbours``: a word
    found there is replaced by one of its neighbours (``embedding_neighbours``) instead of a frequency draw."""
    if copies <= 0 or not texts:
        return []
    if not 0 < rate < 1:
        raise ValueError(f"perturbation rate {rate}; expected a share of words between 0 and 1")
    if min_words < 0:
        raise ValueError(f"minimum words {min_words}; expected 0 (every text) or more")
    counts = Counter(w for row in texts for field in row for w in field.split())
    words = np.array(list(counts))
    cdf = np.cumsum(np.array([counts[w] for w in words], dtype=np.float64))
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)
    known = set(texts)
    sources = [row for row in texts if sum(len(field.split()) for field in row) >= min_words]
    out: dict[tuple[str, ...], None] = {}
    for _ in range(copies):
        for row in sources:
            new = tuple(_perturb(field.split(), rate, rng, words, cdf, neighbours) for field in row)
            if new not in known and new not in exclude and all(new):
                out[new] = None
    return list(out)


def _perturb(
    tokens: list[str],
    rate: float,
    rng: np.random.Generator,
    words: np.ndarray,
    cdf: np.ndarray,
    neighbours: dict[str, list[str]] | None = None,
) -> str:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if rng.random() >= rate:
            out.append(tokens[i])
        else:
            op = rng.random()
            if op < 0.5:
                near = neighbours.get(tokens[i]) if neighbours else None
                draw = rng.random()
                if near:
                    out.append(near[min(int(draw * len(near)), len(near) - 1)])
                else:
                    out.append(str(words[min(int(np.searchsorted(cdf, draw)), len(words) - 1)]))
            elif op < 0.75 and i + 1 < len(tokens):
                out += [tokens[i + 1], tokens[i]]
                i += 1
            # else: deleted
        i += 1
    return " ".join(out)
