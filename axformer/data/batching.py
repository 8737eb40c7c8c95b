"""Tokenised splits and batches padded only to their longest member.

Padding every batch to a fixed length wastes most of the compute on short
texts (FastFormers' "dynamic sequence length" step was worth 3.5x), so every
loop in axformer batches by length: sorted for inference, length-grouped and
shuffled for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from axformer.tasks.data import Split


@dataclass
class Encoded:
    """Token ids of a split and its labels: one sequence per example, or ``group`` consecutive sequences per
    example (a text pair embedded text by text: ``group`` 2)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray
    pad_token_id: int
    group: int = 1

    def __len__(self) -> int:
        return len(self.input_ids) // self.group

    @property
    def lengths(self) -> np.ndarray:
        """Per example, its longest sequence (what its batch is padded to)."""
        rows = np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        return rows.reshape(-1, self.group).max(1) if self.group > 1 else rows

    def rows(self, indices) -> np.ndarray:
        """The sequences of the examples at ``indices``, in order (each example's ``group`` rows together)."""
        idx = np.asarray(indices, dtype=np.int64)
        return (idx[:, None] * self.group + np.arange(self.group)).reshape(-1) if self.group > 1 else idx

    def ungrouped(self) -> Encoded:
        """Every sequence as its own example (a pair's two texts as two texts): what timing an embedding model
        and distilling its embeddings run on; labels do not carry over."""
        if self.group == 1:
            return self
        n = len(self.input_ids)
        return Encoded(self.input_ids, self.token_type_ids, np.zeros(n, np.float32), self.pad_token_id)

    def subset(self, indices) -> Encoded:
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.rows(idx)
        return Encoded(
            [self.input_ids[i] for i in rows],
            [self.token_type_ids[i] for i in rows] if self.token_type_ids is not None else None,
            self.labels[idx],
            self.pad_token_id,
            self.group,
        )


@dataclass
class QAEncoded(Encoded):
    """The windows of a question answering split, one row each: labels are (start, end) token positions, and
    each window knows its question (``example``, an index into ``contexts``) and its tokens' context offsets."""

    example: np.ndarray | None = None
    offsets: list | None = None
    contexts: list[str] | None = None
    answers: list[tuple[str, ...]] | None = None  # each question's gold answers (scoring); None when serving

    def subset(self, indices) -> QAEncoded:
        idx = np.asarray(indices, dtype=np.int64)
        return QAEncoded(
            [self.input_ids[i] for i in idx],
            [self.token_type_ids[i] for i in idx] if self.token_type_ids is not None else None,
            self.labels[idx],
            self.pad_token_id,
            1,
            self.example[idx],
            [self.offsets[i] for i in idx],
            self.contexts,
            self.answers,
        )


def encode_qa(tokenizer, split: Split, max_length: int) -> QAEncoded:
    """Windows of every question's context (``split.doc_stride`` tokens of overlap), labelled with the first gold
    answer's span where a window holds it whole."""
    examples = list(split.labels)
    enc = encode_questions(
        tokenizer,
        [e.question for e in examples],
        [e.context for e in examples],
        max_length,
        split.doc_stride,
        [e.starts[0] for e in examples],
        [e.answers[0] for e in examples],
    )
    enc.answers = [e.answers for e in examples]
    return enc


def encode_questions(
    tokenizer,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    doc_stride: int,
    starts: list[int] | None = None,
    answers: list[str] | None = None,
) -> QAEncoded:
    """Windows of (question, context) pairs; labelled (start, end) where the first gold answers are given, else
    (0, 0): what a service answering questions feeds the model."""
    from axformer.data.qa_windows import make_windows

    w = make_windows(tokenizer, questions, contexts, starts, answers, max_length, doc_stride)
    types = w.token_type_ids if "token_type_ids" in tokenizer.model_input_names else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return QAEncoded(
        [np.asarray(x, dtype=np.int64) for x in w.input_ids],
        [np.asarray(x, dtype=np.int64) for x in types] if types is not None else None,
        np.stack([w.start_positions, w.end_positions], axis=1),
        pad,
        1,
        w.example,
        w.offsets,
        list(contexts),
    )


def encode(tokenizer, split: Split, max_length: int, chunk: int = 4096, separate: bool = False) -> Encoded:
    """Tokenise once; pairs are truncated longest-first, the same way in training and inference.

    ``separate``: every text of an example is its own sequence (a bi-encoder embeds the two texts of a pair
    apart), kept together as one example of ``group`` sequences. A question answering split becomes its
    windows (:func:`encode_qa`)."""
    if split.is_qa:
        return encode_qa(tokenizer, split, max_length)
    if separate and split.texts and len(split.texts[0]) > 1:
        width = len(split.texts[0])
        flat = Split(split.name, [(t,) for row in split.texts for t in row], split.labels)
        enc = encode(tokenizer, flat, max_length, chunk)
        return Encoded(enc.input_ids, enc.token_type_ids, split.labels, enc.pad_token_id, width)
    ids: list[np.ndarray] = []
    types: list[np.ndarray] | None = []
    pair = len(split.texts[0]) == 2 if split.texts else False
    for start in range(0, len(split.texts), chunk):
        part = split.texts[start : start + chunk]
        first = [t[0] for t in part]
        second = [t[1] for t in part] if pair else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
        ids.extend(np.asarray(x, dtype=np.int64) for x in enc["input_ids"])
        if "token_type_ids" in enc and "token_type_ids" in tokenizer.model_input_names and types is not None:
            types.extend(np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"])
        else:
            types = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, types, split.labels, pad)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of similar length, longest first (inference: least padding, and peak memory is met early)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_factor: int = 50
) -> list[np.ndarray]:
    """Training batches: shuffle, sort within mega-batches by length, shuffle the batches.

    Keeps most of the randomness of plain shuffling while padding little.
    """
    perm = rng.permutation(len(lengths))
    mega = batch_size * group_factor
    batches = []
    for start in range(0, len(perm), mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def collate(
    enc: Encoded, indices: np.ndarray, device: torch.device | str = "cpu", with_labels: bool = True
) -> dict[str, torch.Tensor]:
    """Pad the examples at ``indices`` to the longest among them."""
    seqs = enc.rows(indices)
    rows = [enc.input_ids[i] for i in seqs]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), enc.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if enc.token_type_ids is not None:
        tt = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(seqs):
            t = enc.token_type_ids[i]
            tt[j, : len(t)] = t
        batch["token_type_ids"] = torch.from_numpy(tt)
    if enc.group > 1:  # tells an embedding model to score each group (a pair) instead of returning embeddings
        batch["group_size"] = torch.tensor(enc.group)
    if with_labels:
        batch["labels"] = torch.from_numpy(np.asarray(enc.labels[indices]))
    return {k: v.to(device) for k, v in batch.items()}
