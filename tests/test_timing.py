"""Timing on a shared machine: interleaved, rotated rounds with a pause before each variant's turn."""

from __future__ import annotations

import pytest

from axformer.runtime import timing
from axformer.utils.device import cpu_description, cpu_model


def test_rotated_rounds_put_every_variant_in_every_position():
    names = ["a", "b", "c"]
    orders = [timing.rotated(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert all({o[i] for o in orders} == set(names) for i in range(3))
    assert timing.rotated(names, 3) == names
    assert timing.rotated([], 5) == []


@pytest.mark.parametrize("which", ["medians", "candidates"])
def test_each_turn_starts_after_a_pause_and_rounds_rotate(monkeypatch, which):
    events: list[str] = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(f"sleep {s}"))

    def fn(name):
        def call(**_):
            events.append(name)

        return call

    if which == "medians":
        timing.interleaved_medians({"a": fn("a"), "b": fn("b")}, repeats=1, rounds=2, warmup=0, settle_s=0.5)
    else:
        one = [{"input_ids": [[1]]}]
        timing.time_candidates(
            {"a": fn("a"), "b": fn("b")}, {"a": one, "b": one}, {"a": one, "b": one}, rounds=2, warmup=0, settle_s=0.5
        )
        events = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]  # batch-1 then batch-32 pass
    assert events == ["sleep 0.5", "a", "sleep 0.5", "b", "sleep 0.5", "b", "sleep 0.5", "a"]


def test_settle_zero_does_not_sleep(monkeypatch):
    monkeypatch.setattr(timing.time, "sleep", lambda s: pytest.fail("slept"))
    timing.settle(0)


CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16
"""


def test_cpu_description_names_the_model_and_its_int8_and_bf16_instruction_sets():
    assert cpu_model(CPUINFO) == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_description(CPUINFO) == "AMD EPYC 9R14 96-Core Processor (avx512_vnni, avx512_bf16)"
    avx2_only = CPUINFO.replace(" avx512f avx512_vnni avx512_bf16", "")
    assert cpu_description(avx2_only) == "AMD EPYC 9R14 96-Core Processor (avx2)"
    assert cpu_model("") == ""
