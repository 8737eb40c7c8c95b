"""The benchmark: every candidate measured against the baselines in one run; memory measured per process."""

from __future__ import annotations

from axformer.export.artifact import ExportConfig, export_model


def test_benchmark_measures_candidates_against_the_baselines(tiny_task, tmp_path):
    """A small but complete run: four baselines plus an int8 artifact, every column filled; the unpruned model itself
    is not a second row.
    """
    from axformer.benchmark.run import BenchmarkConfig, benchmark

    model, data, _ = tiny_task
    art = tmp_path / "int8"
    export_model(model, art, ExportConfig(precision="int8", device="cpu", max_drop=100), data)
    cfg = BenchmarkConfig(
        lengths=(16, 32),
        latency_examples=5,
        throughput_examples=40,
        fixed_requests=3,
        fixed_batch=4,
        rounds=2,
        instances=2,
        price_per_hour=1.0,
        breakdown_requests=6,
    )
    result = benchmark([str(model), str(art)], tmp_path / "bench", data, None, cfg, progress=lambda m: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert [r["baseline"] for r in result["rows"]] == [True] * 4 + [
        False
    ]  # the model given is the dynamic-length baseline
    for r in result["rows"]:
        assert r["timing"]["latency_p50_ms"] > 0 and r["timing"]["throughput_per_s"] > 0
        assert set(r["fixed"]) == {"16", "32"} and r["size_bytes"] > 0 and r["parameters"] > 0
        assert r["peak_memory_mib"] > 0 and r["usd_per_100m"] > 0
        assert r["padded"] or r["multi_instance"]["throughput_per_s"] > 0
    # the same weights give the same dev metric whether dynamic or in ONNX Runtime fp32; the padded row reports the
    # dynamic row's, which holds because padding to the maximum length changes no output (measured here)
    metrics = [r["dev"]["metrics"]["accuracy"] for r in result["rows"][:3]]
    assert max(metrics) - min(metrics) < 1e-6
    _padding_changes_no_output(model, data)
    # cost follows FastFormers' formula from the best throughput
    r = result["rows"][-1]
    best = max(r["timing"]["throughput_per_s"], r["multi_instance"]["throughput_per_s"])
    assert abs(r["usd_per_100m"] - 1.0 * 1e8 / (best * 3600)) < 1e-6
    # every ONNX row served one request at a time on the lean path, its options chosen by timing
    for r in result["rows"]:
        assert (r["lean"] is not None) == (r["kind"] == "onnx")
        if r["lean"]:
            assert r["lean"]["choice"] in [
                {k: v for k, v in c.items() if k != "ms_per_request"} for c in r["lean"]["choices"]
            ]
            assert r["lean"]["breakdown"]["run"] > 0 and r["lean"]["breakdown"]["predictor"] > 0
    # batch 1 once more with one thread per row: every row but the padded one, latency only; the ONNX rows also at
    # their default threads in the same rounds, each then timed at its faster count
    for r in result["rows"]:
        one, faster = r["timing_one_thread"], r["faster_threads"]
        assert (one is None) == r["padded"]
        assert r["padded"] or (one["latency_p50_ms"] > 0 and one["throughput_per_s"] is None)
        assert (faster is not None) == (r["kind"] == "onnx")
        if faster:
            assert set(faster["choosing_p50_ms"]) == {"1", "default"}
            assert faster["threads"] == min(faster["choosing_p50_ms"], key=faster["choosing_p50_ms"].get)
            assert 0 < faster["latency_p50_ms"] <= faster["latency_p95_ms"]
    md = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "Batch 1 with one thread per row, and at each row's faster" in md
    assert "speed-up against ONNX Runtime int8" in md and "speed-up (each at its faster)" in md
    assert "One request end to end" in md
    assert (
        "ONNX Runtime int8" in md
        and "onnxruntime" in md
        and (tmp_path / "bench" / "tradeoff.png").stat().st_size > 1000
    )
    assert len(rows) == len(result["rows"])  # row names are unique


def test_peak_memory_is_the_child_s_own(tiny_task):
    """A fresh process per candidate: the benchmark's own (large) footprint must not leak into the figure."""
    import torch

    from axformer.benchmark.measure import peak_memory_mib

    model, _, _ = tiny_task
    ballast = torch.ones(400_000_000, dtype=torch.float32)  # 1.5 GiB resident in this process
    batch = {
        "input_ids": torch.ones(2, 8, dtype=torch.long),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
    }
    peak = peak_memory_mib(str(model), batch)
    assert 10 < peak < 1400, peak
    del ballast


def _padding_changes_no_output(model, data) -> None:
    import numpy as np

    from axformer.data.batching import encode
    from axformer.inference import run_model
    from axformer.models.loading import load_model, load_tokenizer
    from axformer.runtime.backends import max_input_length
    from axformer.runtime.timing import pad_to

    net = load_model(model, data.spec).eval()
    longest = max_input_length(model)  # what the benchmark pads to
    enc = encode(load_tokenizer(model), data.dev["dev"], longest)

    class Padded:  # the out-of-the-box pipeline: every batch padded to the maximum length
        def eval(self):
            return self

        def __call__(self, **batch):
            return net(**pad_to(batch, longest, enc.pad_token_id))

    padded = Padded()
    dynamic = run_model(net, enc, False, 32, "cpu").logits
    assert int(enc.lengths.max()) < longest  # padding really happens
    np.testing.assert_allclose(run_model(padded, enc, False, 32, "cpu").logits, dynamic, rtol=0, atol=1e-6)


def test_benchmark_threads_apply_to_every_timed_row_and_are_restored(tiny_task, tmp_path, monkeypatch):
    import pytest
    import torch

    from axformer.benchmark import run as bench_run
    from axformer.errors import AxformerError

    model, data, _ = tiny_task
    art = tmp_path / "fp32"
    export_model(model, art, ExportConfig(precision="fp32", device="cpu", max_drop=100), data)
    seen = {"sessions": [], "torch": []}
    load, timed = bench_run.load_runnable, bench_run.time_candidates

    def loading(path, *a, threads=None, **k):
        seen["sessions"].append(threads)
        return load(path, *a, threads=threads, **k)

    def timing(*a, **k):
        seen["torch"].append(torch.get_num_threads())
        return timed(*a, **k)

    monkeypatch.setattr(bench_run, "load_runnable", loading)
    monkeypatch.setattr(bench_run, "time_candidates", timing)
    before = torch.get_num_threads()
    cfg = bench_run.BenchmarkConfig(
        baselines=False, lengths=(8,), latency_examples=3, throughput_examples=8, fixed_requests=2, fixed_batch=2,
        rounds=1, instances=1, memory=False, breakdown_requests=0, threads=1,
    )  # fmt: skip
    result = bench_run.benchmark([str(model), str(art)], tmp_path / "b", data, None, cfg, progress=lambda m: None)
    # dev texts, then the fixed length; with one thread already, no second pass at one thread
    assert seen["sessions"] == [1, 1] and seen["torch"] == [1, 1]
    assert torch.get_num_threads() == before
    assert result["config"]["threads"] == 1
    assert "1 thread(s) per row" in (tmp_path / "b" / "benchmark.md").read_text()
    with pytest.raises(AxformerError, match="--threads 0"):
        bench_run.BenchmarkConfig(threads=0).validate()
    with pytest.raises(AxformerError, match="--one-thread-requests -1"):
        bench_run.BenchmarkConfig(one_thread_requests=-1).validate()


def test_rows_of_models_with_the_same_directory_name_stay_apart():
    """Two runs' ``4-export`` artifacts benchmarked together keep one row each, named by their paths."""
    from axformer.benchmark.run import row_names

    assert row_names(["runs/a/4-export", "runs/b/4-export", "runs/b/3-search"], {"ONNX Runtime int8"}) == [
        "runs/a/4-export",
        "runs/b/4-export",
        "3-search",
    ]
    assert row_names(["x/ONNX Runtime int8"], {"ONNX Runtime int8"}) == ["x/ONNX Runtime int8"]


def test_faster_threads_chooses_on_one_half_of_the_requests_and_times_the_other():
    """The faster count is read off the even-numbered requests of every round; its figures off the odd-numbered
    ones, so a lucky choosing half does not make the reported figure lucky too."""
    from axformer.benchmark.run import faster_threads
    from axformer.runtime.timing import Timing

    # 4 requests a round, 2 rounds. One thread: even requests 1.0 ms, odd 3.0; default: even 2.0, odd 2.5
    one = Timing(latency_ms=[1.0, 3.0, 1.0, 3.0] * 2)
    default = Timing(latency_ms=[2.0, 2.5, 2.0, 2.5] * 2)
    choice = faster_threads({"1": one, "default": default}, requests=4)
    assert choice.threads == "1" and choice.choosing_p50_ms == {"1": 1.0, "default": 2.0}
    assert choice.latency_p50_ms == 3.0 and choice.latency_p95_ms == 3.0  # the other half's, not 1.0
    # parity is per request within a round: with 3 requests a round the second round starts on an even request
    one = Timing(latency_ms=[5.0, 9.0, 5.0] * 2)
    default = Timing(latency_ms=[6.0, 1.0, 6.0] * 2)
    choice = faster_threads({"1": one, "default": default}, requests=3)
    assert choice.threads == "1" and choice.latency_p50_ms == 9.0
