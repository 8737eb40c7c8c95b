"""Vocabulary pruning (TextPruner's idea): keep the token ids a task's texts use, slice the embedding, rewrite the
tokenizer.

Half of a small encoder is its word-embedding table (MiniLM: 30,522 x 384 of 22.7M parameters), and a task
uses a third of it. Pruning keeps:

- every id the tokenizer produces on the given texts (the training texts the decisions may see, and the
  user's ``--calibration-texts``; never the texts that certify or report),
- every special and added token,
- with ``keep_characters``, every single-character piece (``a``, ``##a``, ``▁a``, byte-level symbols), so a
  word made of removed pieces is re-spelled from smaller kept pieces instead of becoming one unknown token,
- for BPE, every intermediate token of the merges that build a kept token (without them BPE could not reach
  the kept token and would stop at different pieces).

What happens to a token outside the kept set (``unseen``): ``nearest`` (the default) keeps it in the
tokenizer as an alias of the kept token whose embedding is closest to its own (cosine), so every text is
segmented exactly as before and a rare word costs only the difference between two neighbouring embeddings;
``respell`` removes it, so WordPiece and BPE spell the word from smaller kept pieces (TextPruner's way; a word
they cannot spell becomes the unknown token). Measured on MRPC (MiniLM, fp32, dev F1 85.71; 4.2% of dev
tokens outside the kept set): nearest 85.62, unknown token 84.37, respell 83.45. Unigram vocabularies number
pieces by position and cannot share an id: they are always re-spelled.

The kept ids are renumbered in their original order, the tokenizer's model (WordPiece, BPE, Unigram or
WordLevel vocabulary, BPE merges), added tokens, post-processor and padding ids are rewritten to the new
numbering, and the model's input embedding (and a tied output embedding) is sliced to match. On every text
whose original tokens are all kept, the pruned tokenizer gives exactly the original ids, mapped (WordPiece's
greedy longest match, BPE's lowest-rank-merge-first and Unigram's best segmentation cannot pick a piece that
is gone, and lose no piece they picked). Other texts get re-spelled pieces or the unknown token; how many
tokens that affects is measured, not assumed (:func:`coverage`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from axformer.errors import AxformerError

FAMILIES = ("WordPiece", "BPE", "Unigram", "WordLevel")
UNSEEN = ("nearest", "respell")
ALIASING = ("WordPiece", "BPE", "WordLevel")  # vocabularies mapping token -> id (several tokens may share one)
_CONFIG_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id")


@dataclass
class VocabularyConfig:
    """What the size goal may do to the vocabulary and positions of the model it exports."""

    prune: bool = False  # keep only the token ids the training (and calibration) texts use
    # single-character pieces stay even when unused, so no unseen word becomes unknown (SST-2: 1,911 more rows
    # for 7 fewer unknown dev tokens of 20,199: the used pieces already spell almost everything)
    keep_characters: bool = False
    # trim the position embeddings to the longest input the model is run at (its recorded max sequence
    # length): inputs are then truncated there (they already are by axformer's runtime)
    trim_positions: bool = False
    unseen: str = "nearest"  # tokens outside the kept set: "nearest" (alias of the closest kept one) or "respell"
    # keep a token only if the texts use it this often (TextPruner's min_count): with nearest aliases a rare
    # token costs little, and a third of the tokens a task uses occur once
    min_count: int = 1

    def validate(self) -> None:
        if self.min_count < 1:
            raise AxformerError(f"vocabulary.min_count {self.min_count}; expected a positive count")
        if self.unseen not in UNSEEN:
            raise AxformerError(f"vocabulary.unseen {self.unseen!r}; expected one of {', '.join(UNSEEN)}")


@dataclass
class VocabularyPlan:
    """The kept ids (original numbering, sorted: new id = position) and what they came from."""

    family: str
    kept: list[int]
    original_size: int
    from_texts: int  # ids the texts used
    special: int
    characters: int
    merge_closure: int  # intermediate BPE tokens added
    texts: int  # how many texts (or pairs) were read
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("kept")
        d["kept_size"] = len(self.kept)
        return d


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise AxformerError(
            f"vocabulary pruning needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} has none"
        )
    return json.loads(backend.to_str())


def _family(spec: dict) -> str:
    family = spec["model"]["type"]
    if family not in FAMILIES:
        raise AxformerError(
            f"vocabulary pruning supports the {', '.join(FAMILIES)} tokenizer families; this tokenizer is {family}"
        )
    return family


def _vocab_items(model: dict) -> dict[str, int]:
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _merges(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def _is_character(token: str, model: dict) -> bool:
    prefix = model.get("continuing_subword_prefix") or ""
    if prefix and token.startswith(prefix) and len(token) > len(prefix):
        token = token[len(prefix) :]
    suffix = model.get("end_of_word_suffix") or ""
    if suffix and token.endswith(suffix) and len(token) > len(suffix):
        token = token[: -len(suffix)]
    if token.startswith("▁") and len(token) > 1:  # SentencePiece's word-boundary mark
        token = token[1:]
    return len(token) == 1 or (token.startswith("<0x") and token.endswith(">") and len(token) == 6)


def used_ids(
    tokenizer, texts: Iterable[Sequence[str]], batch_size: int = 1000, min_count: int = 1
) -> tuple[set[int], int]:
    """The ids the tokenizer produces at least ``min_count`` times on ``texts`` (tuples of one or two strings,
    encoded as the model sees them)."""
    from collections import Counter

    ids: Counter = Counter()
    n = 0
    batch: list[Sequence[str]] = []

    def flush() -> None:
        if not batch:
            return
        firsts = [t[0] for t in batch]
        seconds = [t[1] for t in batch] if len(batch[0]) > 1 else None
        enc = tokenizer(firsts, seconds, add_special_tokens=True, truncation=False)["input_ids"]
        for row in enc:
            ids.update(row)
        batch.clear()

    for t in texts:
        t = (t,) if isinstance(t, str) else tuple(t)
        if batch and len(t) != len(batch[0]):
            flush()
        batch.append(t)
        n += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    return {i for i, c in ids.items() if c >= min_count}, n


def plan_vocabulary(
    tokenizer, texts: Iterable[Sequence[str]], keep_characters: bool = False, min_count: int = 1
) -> VocabularyPlan:
    """Which ids to keep for ``texts``; see the module docstring for what is always kept."""
    spec = _tokenizer_json(tokenizer)
    family = _family(spec)
    model = spec["model"]
    vocab = _vocab_items(model)
    size = len(tokenizer)
    used, n = used_ids(tokenizer, texts, min_count=min_count)
    kept = set(used)
    special = {int(a["id"]) for a in spec.get("added_tokens", [])}
    special |= {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    unk = model.get("unk_token")
    if isinstance(unk, str) and unk in vocab:
        special.add(vocab[unk])
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        special.add(int(model["unk_id"]))
    kept |= special
    chars: set[int] = set()
    if keep_characters or family == "BPE":  # BPE starts from its alphabet: without it nothing can be spelled
        chars = {i for tok, i in vocab.items() if _is_character(tok, model)}
        kept |= chars
    closure = 0
    if family == "BPE":
        producers: dict[str, list[tuple[str, str]]] = {}
        for a, b in _merges(model):
            producers.setdefault(a + b, []).append((a, b))
        by_id = {i: t for t, i in vocab.items()}
        stack = [by_id[i] for i in kept if i in by_id]
        seen = set(stack)
        while stack:
            tok = stack.pop()
            for a, b in producers.get(tok, []):
                for part in (a, b):
                    if part not in seen and part in vocab:
                        seen.add(part)
                        stack.append(part)
                        if vocab[part] not in kept:
                            kept.add(vocab[part])
                            closure += 1
    kept_sorted = sorted(i for i in kept if 0 <= i < size)
    return VocabularyPlan(
        family,
        kept_sorted,
        size,
        len(used),
        len(special - used),
        len(chars - used - special),
        closure,
        n,
    )


def _remap_post_processor(proc: dict | None, new_id: dict[int, int]) -> None:
    if not proc:
        return
    kind = proc.get("type")
    if kind == "Sequence":
        for p in proc.get("processors", []):
            _remap_post_processor(p, new_id)
    elif kind == "TemplateProcessing":
        for tok in proc.get("special_tokens", {}).values():
            tok["ids"] = [new_id[i] for i in tok["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if key in proc:
                proc[key] = [proc[key][0], new_id[proc[key][1]]]


@torch.no_grad()
def nearest_aliases(embedding: torch.Tensor, kept: Sequence[int]) -> dict[int, int]:
    """For every row outside ``kept``: the new id (position in ``kept``) of the kept row closest to it in cosine."""
    weight = torch.nn.functional.normalize(embedding.detach().float(), dim=-1)
    index = torch.as_tensor(list(kept), dtype=torch.long)
    mask = torch.ones(len(weight), dtype=torch.bool)
    mask[index] = False
    removed = mask.nonzero().flatten()
    out: dict[int, int] = {}
    for chunk in removed.split(4096):  # a [4096, kept] similarity block at a time
        best = (weight[chunk] @ weight[index].T).argmax(-1)
        out.update(zip(chunk.tolist(), best.tolist(), strict=True))
    return out


def pruned_tokenizer_json(tokenizer, kept: Sequence[int], aliases: dict[int, int] | None = None) -> str:
    """The tokenizer's ``tokenizer.json`` with only ``kept`` ids, renumbered 0..len-1 in their original order; with
    ``aliases`` (old id -> new id, WordPiece/BPE/WordLevel) the other tokens stay, sharing the ids given."""
    spec = _tokenizer_json(tokenizer)
    family = _family(spec)
    if aliases and family not in ALIASING:
        aliases = None
    new_id = {old: new for new, old in enumerate(kept)}
    new_id.update(aliases or {})
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[int(model["unk_id"])]
    else:
        model["vocab"] = {
            tok: new_id[i] for tok, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if i in new_id
        }
        if model["type"] == "BPE":
            vocab = model["vocab"]
            as_strings = bool(model.get("merges")) and isinstance(model["merges"][0], str)
            merges = [(a, b) for a, b in _merges(model) if a in vocab and b in vocab and a + b in vocab]
            model["merges"] = [f"{a} {b}" for a, b in merges] if as_strings else [[a, b] for a, b in merges]
    for a in spec.get("added_tokens", []):
        a["id"] = new_id[int(a["id"])]
    _remap_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding") and spec["padding"].get("pad_id") is not None:
        spec["padding"]["pad_id"] = new_id.get(int(spec["padding"]["pad_id"]), 0)
    return json.dumps(spec, ensure_ascii=False)


def prune_tokenizer(
    tokenizer,
    kept: Sequence[int],
    directory: str | Path,
    max_length: int | None = None,
    aliases: dict[int, int] | None = None,
):
    """Save the pruned tokenizer in ``directory`` (``tokenizer.json``, its config and, for WordPiece, ``vocab.txt``)
    and return it loaded the way users load it, with ``AutoTokenizer``.

    ``tokenizer.json`` is written as text: the tokenizers library serializes a vocabulary by id, keeping one
    token per id, so re-saving a loaded tokenizer with ``save_pretrained`` turns aliases into re-spelling (copy
    the file to keep them). ``vocab.txt`` (for slow WordPiece tokenizers, one token per line) holds the kept
    tokens only."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    if _family(_tokenizer_json(tokenizer)) not in ALIASING:
        aliases = None  # Unigram: pieces are numbered by position, they cannot share an id
    text = pruned_tokenizer_json(tokenizer, kept, aliases)
    Tokenizer.from_str(text)  # refuses an inconsistent file here rather than at the user's
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    spec = json.loads(text)
    if spec["model"]["type"] == "WordPiece":
        first = {}
        for t, i in spec["model"]["vocab"].items():
            if kept[i] == tokenizer.convert_tokens_to_ids(t):  # the kept token of each id, not an alias
                first[i] = t
        (directory / "vocab.txt").write_text("".join(first[i] + "\n" for i in sorted(first)), encoding="utf-8")
    else:
        (directory / "vocab.txt").unlink(missing_ok=True)
    for stale in ("vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "spm.model"):
        (directory / stale).unlink(missing_ok=True)  # slow-tokenizer files describe the old numbering
    (directory / VOCABULARY_FILE).write_text(
        json.dumps({"kept": [int(i) for i in kept], "original_size": len(tokenizer), "aliases": len(aliases or {})})
    )
    cfg_path = directory / "tokenizer_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("vocab_file", None)
        cfg.pop("merges_file", None)
        if max_length is not None:
            cfg["model_max_length"] = int(max_length)
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return AutoTokenizer.from_pretrained(str(directory))


def _slice_embedding(embedding: nn.Embedding, kept: torch.Tensor) -> nn.Embedding:
    padding = embedding.padding_idx
    new = nn.Embedding(len(kept), embedding.embedding_dim, padding_idx=None)
    new.weight = nn.Parameter(embedding.weight.detach()[kept].clone())
    if padding is not None:
        hit = (kept == padding).nonzero()
        new.padding_idx = int(hit[0, 0]) if len(hit) else None
    return new.to(embedding.weight.device)


@torch.no_grad()
def prune_model_vocabulary(model, kept: Sequence[int]) -> None:
    """Slice the input embedding (and a tied or separate output embedding) to ``kept`` rows, in place; the config's
    vocabulary size and special-token ids follow."""
    index = torch.as_tensor(list(kept), dtype=torch.long)
    emb = model.get_input_embeddings()
    if emb is None or not isinstance(emb, nn.Embedding):
        raise AxformerError(f"{type(model).__name__} has no input embedding table to prune")
    if int(index.max()) >= emb.num_embeddings:
        raise AxformerError(
            f"kept token id {int(index.max())} is outside the model's {emb.num_embeddings}-row embedding; the "
            "tokenizer does not belong to this model"
        )
    model.set_input_embeddings(_slice_embedding(emb, index))
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, nn.Linear) and out.weight.shape[0] == emb.num_embeddings:
        out.weight = nn.Parameter(out.weight.detach()[index].clone())
        if out.bias is not None:
            out.bias = nn.Parameter(out.bias.detach()[index].clone())
        out.out_features = len(index)
    new_id = {int(old): new for new, old in enumerate(index.tolist())}
    model.config.vocab_size = len(index)
    for key in _CONFIG_ID_KEYS:
        old = getattr(model.config, key, None)
        if isinstance(old, int):
            setattr(model.config, key, new_id.get(old))


def _position_table(model) -> tuple[nn.Module, nn.Embedding] | None:
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    return (embeddings, table) if isinstance(table, nn.Embedding) else None


@torch.no_grad()
def trim_positions(model, max_length: int) -> int | None:
    """Keep the position embeddings for inputs of up to ``max_length`` tokens (plus a RoBERTa-style offset); returns
    the rows kept, or None where the model has no absolute position table (rotary, relative positions)."""
    found = _position_table(model)
    if found is None:
        return None
    embeddings, table = found
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    rows = min(table.num_embeddings, max_length + offset)
    new = nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx)
    new.weight = nn.Parameter(table.weight.detach()[:rows].clone())
    embeddings.position_embeddings = new.to(table.weight.device)
    for name in ("position_ids", "token_type_ids"):  # buffers sized by the old table
        buf = getattr(embeddings, name, None)
        if isinstance(buf, torch.Tensor) and buf.dim() == 2 and buf.shape[1] > rows:
            embeddings.register_buffer(name, buf[:, :rows].clone(), persistent=False)
    model.config.max_position_embeddings = rows
    return rows


@dataclass
class Coverage:
    """How the pruned vocabulary serves a set of texts, measured with the original tokenizer's tokens."""

    tokens: int  # original (non-special) tokens
    outside: int  # of them, not in the kept set
    unknown_before: int  # unknown tokens the original tokenizer already produced
    unknown_after: int  # unknown tokens the pruned tokenizer produces
    texts_changed: int  # texts whose ids differ (after mapping)
    texts: int

    @property
    def outside_share(self) -> float:
        return 100.0 * self.outside / max(self.tokens, 1)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "outside_percent": self.outside_share,
            "unknown_after_percent": 100.0 * self.unknown_after / max(self.tokens, 1),
        }


VOCABULARY_FILE = "vocabulary.json"


def kept_ids_of(original, directory: str | Path) -> list[int]:
    """The original ids behind a pruned tokenizer's ids (what :func:`plan_vocabulary` kept): recorded in
    ``vocabulary.json`` beside the tokenizer (aliases share ids, so the tokenizer alone cannot tell)."""
    record = json.loads((Path(directory) / VOCABULARY_FILE).read_text())
    if record.get("original_size") != len(original):
        raise AxformerError(
            f"{directory}/{VOCABULARY_FILE} was pruned from a {record.get('original_size')}-token vocabulary, not "
            f"this {len(original)}-token one"
        )
    return [int(i) for i in record["kept"]]


def coverage(original, pruned, kept: Sequence[int], texts: Sequence[Sequence[str]]) -> Coverage:
    """What pruning does to ``texts``: their tokens outside the kept set, unknown tokens before and after, and how
    many texts are encoded differently."""
    new_id = {old: new for new, old in enumerate(kept)}
    specials = set(getattr(original, "all_special_ids", []))
    unk0 = original.unk_token_id
    unk1 = pruned.unk_token_id
    tokens = outside = before = after = changed = 0
    for t in texts:
        t = (t,) if isinstance(t, str) else tuple(t)
        a = original(*t, truncation=False)["input_ids"]
        b = pruned(*t, truncation=False)["input_ids"]
        body = [i for i in a if i not in specials or i == unk0]
        tokens += len(body)
        outside += sum(i not in new_id for i in body)
        before += sum(i == unk0 for i in a)
        after += sum(i == unk1 for i in b)
        changed += [new_id.get(i, -1) for i in a] != b
    return Coverage(tokens, outside, before, after, changed, len(texts))
