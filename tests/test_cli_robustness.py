"""Rough edges a new user hits: each gets one line naming what was wrong, exit status 2, no output written, and
the inputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from axformer.utils.io import read_json
from tests.conftest import write_sentiment_files
from tests.test_cli import assert_clean_failure, run_cli


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def files(tmp_path):
    return write_sentiment_files(tmp_path / "data")


def _optimize(model, out, train, dev, *extra):
    return ["optimize", model, "-o", out, "--train", train, "--dev", dev, "--text-column", "text", *extra]


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        (["--goal", "speed", "--max-drop", "-1"], r"--max-drop -1\.0; expected a non-negative"),
        (["--goal", "speed", "--max-rel-drop", "-5"], r"--max-rel-drop -5\.0; expected a percentage"),
        (["--goal", "speed", "--max-rel-drop", "100"], r"--max-rel-drop 100\.0; expected a percentage"),
        (["--goal", "speed", "--target-speedup", "1"], r"--target-speedup 1\.0; expected a factor above 1"),
        (["--goal", "size", "--target-size", "0.5"], r"--target-size 0\.5; expected a factor above 1"),
        (["--goal", "accuracy", "-k", "0"], r"-k 0; expected a positive number"),
        (["--goal", "accuracy", "--fraction", "1.5"], r"--fraction 1\.5; expected a value between 0 and 1"),
        (["--goal", "accuracy", "--fraction", "0"], r"--fraction 0\.0; expected a value between 0 and 1"),
        (
            ["--goal", "speed", "--recover", "distill", "--recover-hard-weight", "-1"],
            r"--recover-hard-weight -1\.0; expected a weight >= 0",
        ),
        (
            ["--goal", "speed", "--recover", "distill", "--recover-augment", "1", "--recover-augment-words", "glove"],
            r"--recover-augment-words 'glove'; expected one of unigram, neighbours",
        ),
        (
            ["--goal", "speed", "--recover", "distill", "--recover-max-minutes", "0"],
            r"--recover-max-minutes 0; expected minutes above 0",
        ),
    ],  # fmt: skip
)
def test_optimize_refuses_impossible_settings_before_any_work(
    monkeypatch, capsys, tiny_bert, files, tmp_path, options, pattern
):
    before = snapshot(tiny_bert)
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_optimize(tiny_bert, out, *files, *options))
    assert_clean_failure(code, err, out, pattern)
    assert snapshot(tiny_bert) == before


def test_distill_refuses_bad_calibration_texts_before_any_work(monkeypatch, capsys, tuned_tiny, tmp_path):
    """``axformer distill --calibration-texts``: a missing file, or a CSV without the named column, is one line
    and exit 2 before anything is written."""
    teacher, _, _ = tuned_tiny  # its task (the files it was fine-tuned on) is recorded with it
    bad = tmp_path / "calibration.csv"
    bad.write_text("text,other\nsome words,x\n")
    for options, pattern in (
        (["--calibration-texts", tmp_path / "none.txt"], r"--calibration-texts .*none\.txt does not exist"),
        (["--calibration-texts", bad, "--calibration-column", "sentence"], r"has no column 'sentence'"),
    ):
        out = tmp_path / "student"
        command = ["distill", "--teacher", teacher, "-o", out, "--student-layers", "1", *options]
        code, _, err = run_cli(monkeypatch, capsys, *command)
        assert_clean_failure(code, err, out, pattern)
    good = tmp_path / "calibration.txt"  # and a good file reaches the distillation
    good.write_text("a fresh production sentence\nanother fresh one\n")
    fast = ["--epochs", "1", "--max-seq-length", "32", "--batch-size", "32", "--device", "cpu"]
    command = ["distill", "--teacher", teacher, "-o", out, "--student-layers", "1", *fast]
    code, _, err = run_cli(monkeypatch, capsys, *command, "--calibration-texts", good)
    assert code == 0, err
    assert read_json(out / "axformer.json")["history"][-1]["extra_texts"] == 2


def test_prune_refuses_to_remove_every_layer(monkeypatch, capsys, tiny_bert, tmp_path):
    from axformer.models.loading import load_model
    from axformer.surgery.prune import current_structure

    layers = current_structure(load_model(tiny_bert)).present_layers
    before = snapshot(tiny_bert)
    out = tmp_path / "pruned"
    names = [f"L{i}" for i in layers]
    code, _, err = run_cli(monkeypatch, capsys, "prune", tiny_bert, "-o", out, *[a for n in names for a in ("-r", n)])
    assert_clean_failure(code, err, out, r"leaves no encoder layer .* keep at least one layer")
    assert snapshot(tiny_bert) == before
    # all but one is fine
    code, _, err = run_cli(monkeypatch, capsys, "prune", tiny_bert, "-o", out, "-r", ",".join(names[1:]))
    assert code == 0, err
    assert current_structure(load_model(out)).present_layers == layers[:1]


@pytest.mark.parametrize("command", ["prune", "export", "evaluate", "finetune", "optimize", "analyze"])
def test_no_command_writes_its_output_over_an_input(monkeypatch, capsys, tiny_bert, files, tmp_path, command):
    before = snapshot(tiny_bert)
    args = {
        "prune": ["prune", tiny_bert, "-o", tiny_bert, "-r", "L0.ffn", "--overwrite"],
        "export": ["export", tiny_bert, "-o", tiny_bert, "--overwrite"],
        "evaluate": ["evaluate", tiny_bert, "-o", tiny_bert],
        "finetune": [
            *["finetune", tiny_bert, "-o", tiny_bert.parent, "--overwrite", "--train", files[0], "--dev", files[1]],
            *["--text-column", "text"],
        ],
        "optimize": [*_optimize(tiny_bert, tiny_bert, *files), "--overwrite"],
        "analyze": ["analyze", tiny_bert, "-o", tiny_bert, "--overwrite"],
    }[command]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "would overwrite the input" in lines[0], err
    assert snapshot(tiny_bert) == before


def test_a_missing_local_model_is_named_as_a_missing_directory(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no" / "such" / "dir"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "finetune",
        missing,
        "-o",
        out,
        "--train",
        files[0],
        "--dev",
        files[1],
        "--text-column",
        "text",
    )
    assert_clean_failure(code, err, out, r"model directory .*no/such/dir does not exist")
    assert "hub" not in err


def test_a_tsv_row_with_too_few_fields_names_file_line_and_count(monkeypatch, capsys, tiny_bert, tmp_path):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("sentence\tlabel\nhello world\t1\nbad row\nfine\t0\n")
    dev.write_text("sentence\tlabel\nok\t1\nno\t0\n")
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *["finetune", tiny_bert, "-o", out, "--train", train, "--dev", dev, "--text-column", "sentence"],
    )
    assert_clean_failure(code, err, out, r"train\.tsv:3 has 1 columns; expected at least 2")


@pytest.mark.parametrize("command", ["evaluate", "analyze", "export", "optimize", "benchmark"])
def test_a_directory_that_is_not_a_model_is_named_as_such(monkeypatch, capsys, tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model")
    out = tmp_path / "out"
    args = [command, empty] if command in ("evaluate", "benchmark") else [command, empty, "-o", out]
    if command in ("evaluate", "benchmark"):
        args += ["-o", out]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_clean_failure(code, err, out, r"empty is not a model directory \(no config\.json\)")
