"""More distillation input where the task has little: the parts of long training texts the model never reads.

A model run at ``max_seq_length`` tokens sees only the start of a long text (a BBC article is ~500 tokens, the
demo runs at 128). The later windows of the same texts are in-domain inputs no decision or evaluation uses, and
distillation needs no labels: the teacher's outputs on them are the targets. Windows come from the fast
tokenizer's overflow (the tokenizer's own truncation, decoded back to text), so they split where the tokenizer
would. Pair tasks (two text fields) get none: a later window of one field has no partner.
"""

from __future__ import annotations


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
