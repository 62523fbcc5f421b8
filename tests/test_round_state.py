"""The round's typed state reads what earlier versions wrote.

``fixtures/records-v1.json`` holds round records of every strategy, an experiment run's note
and pending rounds at each phase, and ``fixtures/pool-v1/`` a small pool (two finished rounds,
a third waiting for answers), all written by dgaal before the round state was typed
(``fixtures/pool-v1/make_v1_fixture.sh`` says how).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from dgaal_core.errors import DgaalError
from dgaal_core.experiment.results import RunMeta, run_results
from dgaal_core.loop.abandon import abandon_round
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.oracle import apply_answers
from dgaal_core.loop.state import (
    PendingRound,
    Phase,
    RecordError,
    RoundRecord,
    pending_round,
    round_records,
)
from dgaal_core.model.config import RunConfig
from dgaal_core.pool.check import CHECKS, check_pool
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State

FIXTURES = Path(__file__).parent / "fixtures"
V1 = json.loads((FIXTURES / "records-v1.json").read_text())


@pytest.mark.parametrize("raw", V1["records"], ids=lambda r: f"{r['round']}-{r['strategy']}")
def test_every_v1_round_record_reads_and_round_trips(raw: dict) -> None:
    rec = RoundRecord.from_dict(raw)
    assert rec.round == raw["round"] and rec.strategy == raw["strategy"]
    assert list(rec.selected) == raw["selected"] and rec.accuracy == raw["accuracy"]
    assert rec.config is not None and rec.config.strategy == raw["strategy"]
    assert rec.seconds == pytest.approx(sum(raw["timings"].values()), abs=1e-3)
    assert rec.selection == raw["selection"]
    RunConfig.from_dict(rec.run_config or {})  # the dead TrainConfig fields of v1 are dropped
    assert RoundRecord.from_dict(rec.to_dict()) == rec
    assert rec.to_dict()["version"] == 1


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_v1_pending_rounds_read_at_every_phase(phase: Phase) -> None:
    raw = V1[f"pending_{phase.value}"]
    p = PendingRound.from_dict(raw)
    assert p.phase is phase and list(p.selected) == raw["selected"]
    assert p.config == RoundConfig.from_dict(raw["config"]) and p.require_config() is p.config
    assert list(p.asked(np.zeros(10_000, np.uint8))) == raw["queried"]
    assert PendingRound.from_dict(p.to_dict()) == p
    if phase is Phase.GENERATED:
        assert p.generated_ids == tuple(raw["generated_ids"]) and p.generated_added > 0


def test_older_records_without_the_newer_fields_still_read() -> None:
    raw = dict(V1["records"][0])
    for name in ("labelled_real", "picked_classes", "generated_share", "d1_auc", "selection"):
        del raw[name]
    raw["config"] = {**raw["config"], "score_batch": 512}  # a field that did nothing, dropped
    rec = RoundRecord.from_dict(raw)
    assert rec.labelled_real is None and rec.d1_auc is None and rec.config is not None
    pending = dict(V1["pending_awaiting_labels"])
    del pending["queried"], pending["config"]  # "queried": real picks were the ones asked
    p = PendingRound.from_dict(pending)
    origin = np.zeros(10_000, np.uint8)
    origin[p.selected[0]] = 1  # a generated pick: free, not asked
    assert list(p.asked(origin)) == list(p.selected[1:])
    with pytest.raises(RecordError, match="no config and cannot be resumed"):
        p.require_config()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2, this dgaal reads up to 1"),
        ({"selected": "all of them"}, "'selected' does not parse"),
        ({"oracle_queries": 1.5}, "'oracle_queries' does not parse"),
        ({"config": {"strategy": "magic"}}, "unknown strategy 'magic'"),
    ],
)
def test_a_record_that_does_not_parse_is_a_named_error(change: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        RoundRecord.from_dict({**V1["records"][0], **change})
    with pytest.raises(RecordError, match="unknown phase"):
        PendingRound.from_dict({**V1["pending_selected"], "phase": "almost done"})


def test_an_experiment_note_of_v1_reads() -> None:
    meta = RunMeta.from_dict(V1["experiment_meta"])
    assert meta.strategy == "dgaal" and meta.round0 is not None and meta.round0.round == 0
    assert RunMeta.from_dict(meta.to_dict()) == meta


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "pool-v1", tmp_path / "v1")
    return tmp_path / "v1" / "pools.h5"


def _answer_the_rest(pool: Path) -> Path:
    with PoolReader(pool) as r:
        ids = r.ids(State.QUERIED)
        truth = r.read_truth(ids)
    path = pool.with_name("rest.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(zip(ids.tolist(), truth.tolist(), strict=True))
    return path


def test_the_v1_pool_is_checked_read_reported_and_finished(pool: Path, tmp_path: Path) -> None:
    assert [f.status for f in check_pool(pool)] == ["ok"] * len(CHECKS)
    with PoolReader(pool) as r:
        records, pending = round_records(r), pending_round(r)
    assert [x.strategy for x in records] == ["dgaal", "random"] and records[0].generated_added
    assert pending is not None and pending.phase is Phase.AWAITING_LABELS and pending.round == 3
    runner = CliRunner()
    out = runner.invoke(app, ["pool", "info", str(pool)])
    assert out.exit_code == 0 and "random" in out.output and "rounds" in out.output, out.output
    out = runner.invoke(app, ["report", "--pool", str(pool), "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert [row.round for row in run_results(pool).rows] == [0, 1, 2]  # 0: the initial set
    done = apply_answers(pool, _answer_the_rest(pool))
    assert (done.round, done.answered, done.still_queried) == (3, 4, 0)
    with PoolReader(pool) as r:
        pending = pending_round(r)
    assert pending is not None and pending.phase is Phase.SELECTED
    assert [f.status for f in check_pool(pool)] == ["ok"] * len(CHECKS)


@pytest.mark.slow
def test_the_v1_pool_s_waiting_round_can_be_abandoned_and_a_new_one_run(pool: Path) -> None:
    with pytest.raises(DgaalError, match="holds 4 answers imported"):
        abandon_round(pool)
    out = abandon_round(pool, discard_answers=True)
    assert out.phase is Phase.AWAITING_LABELS and out.requeued == 8 and out.answers_discarded == 4
    res = CliRunner().invoke(
        app,
        ["round", "--pool", str(pool), "--budget", "8", "--quiet", "--gan-steps", "2",
         "--task-epochs", "1", "--task-min-steps", "2", "--coevolve-steps", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with PoolReader(pool) as r:
        assert [x.round for x in round_records(r)] == [1, 2, 3] and pending_round(r) is None
    assert [f.status for f in check_pool(pool)] == ["ok"] * len(CHECKS)
