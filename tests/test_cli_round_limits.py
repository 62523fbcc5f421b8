"""The real ``dgaal`` console script at a round's limits: a budget above the candidates left
(refused, or ``--take-all``) and ``dgaal round --abandon``. Tiny npz pools keep it fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pools import Ran, class_images, script

pytestmark = pytest.mark.slow  # real rounds through the console script

FAST = ["--gan-steps", "3", "--task-epochs", "1", "--task-min-steps", "0", "--quiet"]
dgaal = script


def ok(*args: str | Path) -> str:
    return script(*args, check=True).stdout


def info(path: Path) -> dict:
    return json.loads(ok("pool", "info", path, "--json"))


def assert_refused(proc: Ran, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """48 8x8 images of 4 classes, 12 labelled, 16 test images."""
    x, y = class_images(64)
    np.savez(tmp_path / "data.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    path = tmp_path / "pools.h5"
    ok("pool", "create", path, "--from", "npz", tmp_path / "data.npz", "--initial", "12")
    return path


def test_a_budget_above_the_candidates_is_refused_unless_take_all(pool: Path) -> None:
    before = info(pool)
    refused = dgaal("round", "--pool", pool, "--budget", "100000", *FAST)
    assert_refused(refused, "--budget 100000", "36 candidates", "--take-all")
    assert info(pool) == before  # nothing written, no round folder started
    assert not (pool.with_name("pools.dgaal") / "round-0001").exists()
    assert_refused(dgaal("round", "--pool", pool, "--budget", "0.9", *FAST), "(43 images)")

    ok("round", "--pool", pool, "--budget", "100000", "--take-all", *FAST)
    after = info(pool)
    rec = after["rounds"][0]
    assert len(rec["selected"]) == 36 and rec["config"]["take_all"] is True
    assert after["labelled"] == 48 and after["unlabelled"] == rec["generated_added"] == 36
    # the pool is not stuck: the next round picks among the generated copies, for free
    ok("round", "--pool", pool, "--budget", "4", *FAST)
    assert info(pool)["rounds"][1]["oracle_queries"] == 0


def answer(pool: Path, queries: Path, out: Path, count: int | None = None) -> None:
    """Answer the first ``count`` queried ids of ``queries.csv`` with the truth."""
    import csv

    import h5py

    with h5py.File(pool, "r") as f:
        truth = f["pool/truth"][()]
    ids = [int(row["id"]) for row in csv.DictReader(open(queries))][:count]
    out.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))


def test_abandon_rolls_back_a_round_before_its_labels_are_committed(pool: Path) -> None:
    work = pool.with_name("pools.dgaal")
    before = info(pool)
    ok("round", "--pool", pool, "--oracle", "human", "--budget", "8", *FAST)
    answer(pool, work / "round-0001" / "queries" / "queries.csv", pool.with_name("a.csv"), 3)
    ok("label", "--pool", pool, pool.with_name("a.csv"))
    assert info(pool)["queried"] == 5

    held = info(pool)  # a person's answers are not thrown away without --yes
    assert_refused(dgaal("round", "--pool", pool, "--abandon"), "3 answers imported", "--yes")
    assert info(pool) == held
    out = ok("round", "--pool", pool, "--abandon", "--yes")
    assert "round 1 abandoned: 8 queried images are candidates again" in out
    assert "3 answers already imported discarded" in out and "round-0001.abandoned" in out
    after = info(pool)
    assert {k: after[k] for k in ("labelled", "unlabelled", "queried", "rounds")} == {
        k: before[k] for k in ("labelled", "unlabelled", "queried", "rounds")
    }
    assert (work / "round-0001.abandoned" / "queries" / "queries.csv").is_file()
    assert not (work / "round-0001").exists()
    assert_refused(dgaal("round", "--pool", pool, "--abandon"), "no unfinished round")

    # all answers in: the labels are committed, so the round is finished, not abandoned
    ok("round", "--pool", pool, "--oracle", "human", "--budget", "8", *FAST)
    answer(pool, work / "round-0001" / "queries" / "queries.csv", pool.with_name("b.csv"))
    ok("label", "--pool", pool, pool.with_name("b.csv"))
    committed = info(pool)
    assert_refused(dgaal("round", "--pool", pool, "--abandon"), "committed its labels")
    assert info(pool) == committed
    ok("round", "--pool", pool, *FAST)
    assert len(info(pool)["rounds"]) == 1 and info(pool)["labelled"] == 12 + 8

    # a round that died before writing to the pool leaves only its folder: put aside
    (work / "round-0002").mkdir()
    (work / "round-0002" / "trained.pt").write_bytes(b"partial")
    done = info(pool)
    out = ok("round", "--pool", pool, "--abandon")
    assert "round 2 abandoned: it had written nothing to the pool" in out
    assert (work / "round-0002.abandoned" / "trained.pt").is_file() and info(pool) == done
