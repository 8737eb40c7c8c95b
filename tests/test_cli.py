"""The CLI on bad input: one line naming what was wrong, exit status 2, nothing left behind."""

from __future__ import annotations

import sys

import pytest

from axformer.cli import main
from tests.conftest import make_tiny_model_dir, write_sentiment_files


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["axformer", *map(str, args)])
    capsys.readouterr()  # drop what fixtures printed
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    return write_sentiment_files(tmp_path / "data")


def assert_clean_failure(code, err, out_dir, pattern):
    import re

    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("axformer: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()
    assert not out_dir.with_name(out_dir.name + ".partial").exists()


def task_args(command, model, out, train, dev, *extra):
    """A command on the toy custom task (CPU), as the CLI tests run it."""
    toy = ["--train", train, "--dev", dev, "--text-column", "text", "--label-column", "label", "--device", "cpu"]
    return [command, model, "-o", out, *toy, *extra]


def _finetune_args(model, out, train, dev, *extra):
    return task_args("finetune", model, out, train, dev, *extra)


def test_missing_data_file(monkeypatch, capsys, tiny_bert, files, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_finetune_args(tiny_bert, out, tmp_path / "absent.csv", files[1]))
    assert_clean_failure(code, err, out, r"--train file .*absent.csv does not exist")


def test_missing_column(monkeypatch, capsys, tiny_bert, files, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "finetune",
        tiny_bert,
        "-o",
        out,
        "--train",
        files[0],
        "--dev",
        files[1],
        "--text-column",
        "review",
        "--device",
        "cpu",
    )
    assert_clean_failure(code, err, out, r"train.csv has no column 'review'; its columns are text, label")


def test_label_outside_set(monkeypatch, capsys, tiny_bert, files, tmp_path):
    files[1].write_text(files[1].read_text() + "a text,maybe\n")
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_finetune_args(tiny_bert, out, *files))
    assert_clean_failure(code, err, out, r"label 'maybe' is not in the label set")


def test_empty_split(monkeypatch, capsys, tiny_bert, files, tmp_path):
    files[1].write_text("text,label\n")
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_finetune_args(tiny_bert, out, *files))
    assert_clean_failure(code, err, out, r"split 'dev' from .* is empty")


def test_unknown_task(monkeypatch, capsys, tiny_bert, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "finetune", tiny_bert, "-o", out, "--task", "glue-sst9")
    assert_clean_failure(code, err, out, r"unknown task 'glue-sst9'; expected one of")


def test_model_without_weights(monkeypatch, capsys, tiny_bert, files, tmp_path):
    (tiny_bert / "model.safetensors").unlink()
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_finetune_args(tiny_bert, out, *files))
    assert_clean_failure(code, err, out, r"has no weights; expected model.safetensors")


def test_head_does_not_fit(monkeypatch, capsys, files, tmp_path):
    model = make_tiny_model_dir(tmp_path / "three", num_labels=3)
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, *_finetune_args(model, out, *files))
    assert_clean_failure(code, err, out, r"has a 3-output head but task custom needs 2; pass --new-head")


def test_evaluate_without_task(monkeypatch, capsys, tiny_bert, tmp_path):
    out = tmp_path / "ev"
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", tiny_bert, "-o", out)
    assert_clean_failure(code, err, out, r"records no task; pass --task")


def test_debug_shows_traceback(monkeypatch, capsys, tiny_bert, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, "--debug", "finetune", tiny_bert, "-o", tmp_path / "o", "--task", "nope"
    )
    assert code == 2 and "Traceback" in err


def test_finetune_and_evaluate_happy_path(monkeypatch, capsys, tiny_bert, files, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        monkeypatch, capsys, *_finetune_args(tiny_bert, out, *files, "--epochs", "1", "--max-seq-length", "32")
    )
    assert code == 0, err
    assert "heldout" in stdout and "dev" in stdout and (out / "model.safetensors").is_file()
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", out, "--device", "cpu")
    assert code == 0, err
    assert (out / "eval" / "evaluation.json").is_file() and "accuracy" in stdout


def test_prune_command(monkeypatch, capsys, tiny_bert, tmp_path):
    from axformer.models.loading import load_model
    from axformer.surgery.prune import current_structure

    out = tmp_path / "pruned"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "prune", tiny_bert, "-o", out, "-r", "L0.attn.head1,L1.ffn", "-r", "L2"
    )
    assert code == 0, err
    s = current_structure(load_model(out))
    assert s.layers[2] is None and s.layers[1].neurons == [] and 1 not in s.layers[0].heads
    code, _, err = run_cli(monkeypatch, capsys, "prune", tiny_bert, "-o", tmp_path / "bad", "-r", "L0.attn.group1of3")
    assert_clean_failure(
        code, err, tmp_path / "bad", r"component 'L0.attn.group1of3': group is not part of the attn block"
    )
