"""Oracles: the human query package and validation of a person's answers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dgaal_core.oracle import AnswersError, read_answers, simulated_answers, write_query_package
from dgaal_core.pool import PoolReader
from dgaal_core.pool_writer import PoolBuilder, PoolWriter
from dgaal_core.schema import State

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "p.h5"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    with PoolBuilder(path, (6, 6, 3), CLASSES) as b:
        b.add(images, truth=np.arange(30) % 3)
        b.finish(initial=6, rng=rng)
    with PoolWriter(path) as w:
        w.set_state([10, 11, 12], State.QUERIED)
        w.commit()
    return path, images


def _answers(tmp_path, rows, header=("id", "label")):
    path = tmp_path / "answers.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_query_package_has_csv_pngs_sheet_and_label_studio_tasks(tmp_path, pool):
    _, images = pool
    ids = np.array([10, 11, 12])
    out = write_query_package(tmp_path / "q", ids, images[ids], np.array([0, 1, 2]), CLASSES)
    rows = list(csv.DictReader(open(out["csv"])))
    assert [r["id"] for r in rows] == ["10", "11", "12"]
    assert [r["suggested_label"] for r in rows] == CLASSES
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "q/images/11.png")), images[11])
    assert Image.open(out["contact_sheet"]).size[0] > 0
    tasks = json.loads(open(out["label_studio"]).read())
    assert tasks[0]["data"]["image"].endswith("images/10.png")
    assert tasks[2]["predictions"][0]["result"][0]["value"]["choices"] == ["owl"]


def test_filled_in_queries_csv_is_read_back(tmp_path, pool):
    path, _ = pool
    f = _answers(
        tmp_path,
        [(12, "", "owl"), (10, "", "0"), (11, "", "")],
        header=("id", "suggested_label", "label"),
    )
    with PoolReader(path) as r:
        ids, labels = read_answers(f, r)
        assert ids.tolist() == [10, 12] and labels.tolist() == [0, 2]  # empty rows skipped
        assert simulated_answers(r, ids).tolist() == [1, 0]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(99, "cat")], "id 99 is not in the pool"),
        ([(3, "cat")], "id 3 is not waiting for an answer"),
        ([(10, "horse")], "label 'horse' is not a class"),
        ([(10, "3")], "label '3' is not a class"),
        ([(10, "cat"), (10, "cat")], "duplicate answer for id 10"),
        ([(10, "cat"), (10, "dog")], "conflicting answer for id 10"),
        ([("ten", "cat")], "is not an integer"),
        ([(10, "")], "no answers"),
    ],
)
def test_bad_answers_name_the_line_and_why(tmp_path, pool, rows, message):
    path, _ = pool
    f = _answers(tmp_path, rows)
    with PoolReader(path) as r, pytest.raises(AnswersError, match=message) as e:
        read_answers(f, r)
    assert "\n" not in str(e.value)


def test_answers_file_without_columns_is_rejected(tmp_path, pool):
    path, _ = pool
    f = _answers(tmp_path, [(10, "cat")], header=("image", "class"))
    with PoolReader(path) as r, pytest.raises(AnswersError, match="'id' and 'label' columns"):
        read_answers(f, r)
