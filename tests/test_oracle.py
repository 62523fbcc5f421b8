"""Oracles: the human query package and validation of a person's answers."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from dgaal_core.errors import DgaalError
from dgaal_core.loop.label_studio import label_config
from dgaal_core.loop.oracle import (
    AnswersError,
    apply_answers,
    read_answers,
    read_export,
    simulated_answers,
    write_query_package,
)
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolBuilder, PoolWriter

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "p.h5"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    with PoolBuilder(path, (6, 6, 3), CLASSES) as b:
        b.add(images, truth=np.arange(30) % 3)
        b.finish(labelled=choose_initial(b.truth, 6, rng))
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
    path, images = pool
    ids = np.array([10, 11, 12])
    with PoolReader(path) as r:
        pool_id = r.pool_id
    out = write_query_package(
        tmp_path / "work/round-0002/queries", ids, images[ids], np.array([0, 1, 2]), CLASSES,
        round_no=2, pool_id=pool_id, confidence=np.array([0.5, 0.25, 0.9]),
        d1_scores=np.array([0.1, 0.2, 0.3]), files_root=tmp_path,
    )  # fmt: skip
    rows = list(csv.DictReader(open(out["csv"])))
    assert [r["id"] for r in rows] == ["10", "11", "12"]
    assert [r["suggested_label"] for r in rows] == CLASSES
    png = Path(out["images"]) / "11.png"
    np.testing.assert_array_equal(np.asarray(Image.open(png)), images[11])
    sheet = np.asarray(Image.open(out["contact_sheet"]).convert("L"))
    assert sheet.shape == (2 * (64 + 8 + 24), 2 * (64 + 8))  # 2x2 cells, two caption lines
    assert sheet[4 + 64 + 2 + 12 : 4 + 64 + 24, :72].min() < 100  # T's "cat 50%" is written
    bare = write_query_package(tmp_path / "bare", ids, images[ids], None, CLASSES)
    assert Image.open(bare["contact_sheet"]).size == (2 * 72, 2 * (72 + 12))  # ids only
    tasks = json.loads(open(out["label_studio"]).read())
    data = tasks[1]["data"]
    assert data["image"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert (data["dgaal_id"], data["dgaal_round"], data["dgaal_pool"]) == (11, 2, pool_id)
    assert (data["d1_score"], data["suggested"]) == (0.2, "dog")
    (pred,) = tasks[2]["predictions"]
    assert pred["result"][0]["value"]["choices"] == ["owl"] and pred["score"] == 0.9
    assert pred["model_version"] == "dgaal-round-2"
    local = json.loads(open(out["label_studio_local_files"]).read())
    assert local[0]["data"]["image"] == "/data/local-files/?d=work/round-0002/queries/images/10.png"
    config = ElementTree.fromstring(open(out["label_config"]).read())
    assert [c.get("value") for c in config.iter("Choice")] == CLASSES


def test_label_config_escapes_class_names():
    names = ['a "quoted" <one>', "b & c"]
    config = ElementTree.fromstring(label_config(names))
    assert [c.get("value") for c in config.iter("Choice")] == names


def _ls_task(ls_id, pool_id, *answers, round_no=1, pool=None):
    """A task as Label Studio's JSON export writes it; an answer None is a skipped one."""
    anns = []
    for k, a in enumerate(answers):
        choice = {"from_name": "label", "to_name": "image", "type": "choices"}
        result = [] if a is None else [{**choice, "value": {"choices": [a]}}]
        anns.append({"id": 100 * ls_id + k, "was_cancelled": a is None, "result": result})
    data = {"image": "data:image/png;base64,AA==", "dgaal_id": pool_id, "dgaal_round": round_no}
    if pool:
        data["dgaal_pool"] = pool
    return {"id": ls_id, "annotations": anns, "predictions": [7], "data": data}


def _write_json(tmp_path, items, name="export.json"):
    (tmp_path / name).write_text(json.dumps(items))
    return tmp_path / name


def test_label_studio_json_export_maps_back_through_dgaal_id(tmp_path, pool):
    path, _ = pool
    f = _write_json(
        tmp_path,
        [
            _ls_task(1, 10, "owl"),
            _ls_task(2, 11, "dog", "dog"),  # two annotators agreeing: one answer
            _ls_task(3, 12, None),  # skipped: stays queried
            _ls_task(4, 3, "cat", round_no=0),  # a task of an earlier round: ignored
        ],
    )
    with PoolReader(path) as r:
        got = read_export(f, r, 1)
    assert got.ids.tolist() == [10, 11] and got.labels.tolist() == [2, 1]
    assert got.unanswered == [12] and got.other_rounds == 1


def test_label_studio_min_and_csv_exports_read_like_the_json_one(tmp_path, pool):
    path, _ = pool
    rows = [
        {"image": "x", "dgaal_id": 10, "dgaal_round": 1, "id": 1, "label": "owl"},
        {"image": "x", "dgaal_id": 11, "dgaal_round": 1, "id": 2, "label": "dog"},
        {"image": "x", "dgaal_id": 12, "dgaal_round": 1, "id": 3},  # not annotated
    ]
    f_min = _write_json(tmp_path, rows, "min.json")
    f_csv = tmp_path / "export.csv"
    with open(f_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["annotation_id", "dgaal_id", "dgaal_round", "id", "image", "label"])
        w.writeheader()
        w.writerows({"annotation_id": k, **row} for k, row in enumerate(rows))
    with PoolReader(path) as r:
        for f in (f_min, f_csv):
            got = read_export(f, r, 1)
            assert got.ids.tolist() == [10, 11] and got.labels.tolist() == [2, 1], f
            assert got.unanswered == [12], f


@pytest.mark.parametrize(
    "tasks, message",
    [
        ([_ls_task(2, 11, "dog", "owl"), _ls_task(3, 12, "cat", "dog")],
         "task 2 \\(annotation 200\\): id 11 has conflicting annotations 'dog', 'owl' \\(2 such"),
        ([_ls_task(1, 10, "horse")], "task 1 \\(annotation 100\\): label 'horse' is not a class"),
        ([_ls_task(1, 99, "cat")], "id 99 is not in the pool"),
        ([_ls_task(1, 3, "cat")], "id 3 is not waiting for an answer"),
        ([_ls_task(1, 10, "cat", pool="feedfacefeedface")], "a task of another pool"),
        ([_ls_task(1, 10, None), _ls_task(4, 3, "cat", round_no=0)],
         "no answers for round 1 \\(1 tasks skipped or not annotated; 1 tasks of other rounds"),
        ([{"id": 5, "data": {"image": "x"}, "annotations": []}], "task 5 has no data.dgaal_id"),
        ({"tasks": []}, "expected a JSON list of tasks"),
        ([{"dgaal_id": 10, "id": 1, "annotation_id": 3, "class": "cat"}],
         "annotations but no 'label' column; the project's <Choices> must be named 'label'"),
    ],
)  # fmt: skip
def test_bad_label_studio_exports_name_the_task_and_why(tmp_path, pool, tasks, message):
    path, _ = pool
    f = _write_json(tmp_path, tasks)
    with PoolReader(path) as r, pytest.raises(DgaalError, match=message) as e:
        read_export(f, r, 1)
    assert "\n" not in str(e.value)


def test_dgaal_label_imports_an_export_and_says_what_it_skipped(tmp_path, pool):
    path, _ = pool
    f = _write_json(tmp_path, [_ls_task(1, 10, "owl"), _ls_task(3, 12, None)])
    out = apply_answers(path, f)
    assert out.answered == 1 and out.skipped == 1 and out.still_queried == 2
    with PoolReader(path) as r:
        assert r.labels[10] == 2 and r.states[10] == State.LABELLED
        assert r.states[12] == State.QUERIED
    # the next export of the same project holds the imported answer again: not an error
    f = _write_json(
        tmp_path, [_ls_task(1, 10, "owl"), _ls_task(2, 11, "cat"), _ls_task(3, 12, "dog")]
    )
    out = apply_answers(path, f)
    assert out.answered == 2 and out.already == 1 and out.still_queried == 0
    # ... but a changed answer for an imported image is refused, and nothing is written
    f = _write_json(tmp_path, [_ls_task(1, 10, "cat")])
    with pytest.raises(DgaalError, match="id 10 was imported as 'owl', the export now says 'cat'"):
        apply_answers(path, f)


def test_filled_in_queries_csv_is_read_back(tmp_path, pool):
    path, _ = pool
    f = _answers(
        tmp_path,
        [(12, "", "owl"), (10, "", "0"), (11, "", "")],
        header=("id", "suggested_label", "label"),
    )
    with PoolReader(path) as r:
        got = read_answers(f, r)
        assert got.ids.tolist() == [10, 12] and got.labels.tolist() == [0, 2]  # empty skipped
        assert simulated_answers(r, got.ids).tolist() == [1, 0]


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


def test_a_completed_csv_imported_again_counts_its_answers_and_names_a_changed_one(tmp_path, pool):
    path, _ = pool
    first = apply_answers(path, _answers(tmp_path, [(10, "cat"), (11, "dog")]))
    assert (first.answered, first.still_queried, first.waiting) == (2, 1, (12,))
    assert first.waiting_ids() == "id 12"
    # the same file with the last answer filled in: two imported before, one new
    again = apply_answers(path, _answers(tmp_path, [(10, "cat"), (11, "dog"), (12, "owl")]))
    assert (again.answered, again.already, again.still_queried) == (1, 2, 0)
    with pytest.raises(AnswersError, match="id 11 was imported as 'dog', the file now says 'owl'"):
        apply_answers(path, _answers(tmp_path, [(11, "owl")]))
    with PoolReader(path) as r:
        assert r.labels[[10, 11, 12]].tolist() == [0, 1, 2]
        before = int(r.ids(State.LABELLED)[0])
    with pytest.raises(AnswersError, match=f"id {before} is not waiting .*labelled before"):
        apply_answers(path, _answers(tmp_path, [(before, "owl")]))


def test_waiting_ids_are_named_and_cut_after_ten():
    from dgaal_core.loop.oracle import ImportedAnswers

    out = ImportedAnswers(1, 0, 12, waiting=tuple(range(12)))
    assert out.waiting_ids() == "ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (2 more)"


def test_answers_file_without_columns_is_rejected(tmp_path, pool):
    path, _ = pool
    f = _answers(tmp_path, [(10, "cat")], header=("image", "class"))
    with PoolReader(path) as r, pytest.raises(AnswersError, match="'id' and 'label' columns"):
        read_answers(f, r)
