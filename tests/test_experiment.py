"""Experiments: schedules, strategy x seed runs on pool copies, results.json, resuming, the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pools import class_images
from typer.testing import CliRunner

from cli.main import app
from dgaal_core.experiment.config import ExperimentConfig, ExperimentError, Schedule, parse_list
from dgaal_core.experiment.results import load_results as load_typed_results
from dgaal_core.experiment.runner import Experiment
from dgaal_core.loop import strategies
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolBuilder
from export.round_backend import onnx_exporter

FAST = RoundConfig(gan_steps=4, task_epochs=1, task_min_steps=0, coevolve_steps=2)
SCHEDULE = Schedule(initial=20, step=10, until=40)  # targets 20 -> 30 -> 40: two rounds


def tiny_pool(path: Path, n: int = 100, *, test: bool = True, truth: bool = True) -> Path:
    """Digit-like 8x8 images whose bright rows depend on the class; 40 test images."""
    images, labels = class_images(n)
    with PoolBuilder(path, (8, 8, 1), ["a", "b", "c", "d"]) as b:
        b.add(images, truth=labels if truth else None)
        if test:
            b.add_test(images[:40], labels[:40])
        chosen = choose_initial(b.truth, 0.1, np.random.default_rng(0)) if truth else None
        b.finish(labelled=chosen)
    return path


def load_results(path: Path) -> dict:
    """``results.json`` as written (its documented format), through the reader."""
    return load_typed_results(path).to_dict()


def quiet(*_args: object) -> None:
    """A log that prints nothing."""


def experiment(source: Path, out: Path, exporter=None, **kw) -> Experiment:
    config = ExperimentConfig(
        **{"strategies": ("dgaal", "random"), "seeds": (0,), "schedule": SCHEDULE, "round": FAST}
        | kw
    )
    return Experiment(source, out, config, exporter or onnx_exporter(provider="cpu"), log=quiet)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One finished experiment: dgaal and random, seed 0, two rounds each."""
    tmp = tmp_path_factory.mktemp("exp")
    source = tiny_pool(tmp / "source.h5")
    out = tmp / "exp"
    results = experiment(source, out).run().to_dict()
    return source, out, results


# ---- schedules ------------------------------------------------------------------------------
def test_fraction_schedule_stays_on_the_ratio_grid():
    targets = Schedule(0.1, 0.05, 0.4).targets(1438)
    assert targets == [144, 216, 288, 360, 431, 503, 575]
    assert [round(t / 1438, 2) for t in targets] == [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]


def test_count_schedule_and_a_clipped_last_step():
    assert Schedule(20, 20, 100).targets(1000) == [20, 40, 60, 80, 100]
    assert Schedule(20, 30, 100).targets(1000) == [20, 50, 80, 100]
    assert Schedule(0.1, 25, 0.2).targets(500) == [50, 75, 100]


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (Schedule(0.4, 0.05, 0.2), "must exceed"),
        (Schedule(0.1, 0.0005, 0.4), "less than one image"),
        (Schedule(20, 10, 2000), "asks for 2000 of 1000"),
        (Schedule(20.5, 10, 100), "whole count"),
        (Schedule(1, 10, 100), "T needs 2"),
    ],
)
def test_bad_schedules_are_named_errors(schedule, match):
    with pytest.raises(ExperimentError, match=match):
        schedule.targets(1000)


def test_config_checks_strategies_and_seeds():
    with pytest.raises(ExperimentError, match="unknown strategy"):
        ExperimentConfig(strategies=("dgaal", "magic"))
    with pytest.raises(ExperimentError, match="twice"):
        ExperimentConfig(seeds=(0, 0))
    assert parse_list("dgaal, random,") == ("dgaal", "random")
    assert parse_list("0,1,2", int) == (0, 1, 2)
    with pytest.raises(ExperimentError, match="list of int"):
        parse_list("0,x", int)


def test_source_pool_needs_truth_and_a_test_split(tmp_path):
    with pytest.raises(ExperimentError, match="no test split"):
        experiment(tiny_pool(tmp_path / "a.h5", test=False), tmp_path / "x")
    with pytest.raises(ExperimentError, match="no ground truth"):
        experiment(tiny_pool(tmp_path / "b.h5", truth=False), tmp_path / "y")


# ---- a finished experiment --------------------------------------------------------------------
@pytest.mark.slow
def test_results_hold_every_run_and_round(finished):
    _source, out, results = finished
    assert load_results(out / "results.json") | {"updated": None} == results | {"updated": None}
    assert results["targets"] == [20, 30, 40] and results["real_images"] == 100
    assert [(r["strategy"], r["seed"], r["complete"]) for r in results["runs"]] == [
        ("dgaal", 0, True),
        ("random", 0, True),
    ]
    for run in results["runs"]:
        rows = run["rounds"]
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert [r["labelled"] for r in rows] == [20, 30, 40]
        assert [r["labelled_ratio"] for r in rows] == [0.2, 0.3, 0.4]
        assert rows[0]["oracle_queries_total"] == 0 and rows[0]["free_labels"] == 0
        for prev, row in itertools.pairwise(rows):
            assert row["oracle_queries"] + row["free_labels"] == 10
            assert (
                row["oracle_queries_total"] == prev["oracle_queries_total"] + row["oracle_queries"]
            )
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
        assert (out / run["pool"]).exists()
    dgaal, random = results["runs"]
    assert (
        dgaal["rounds"][1]["generated_added"] == 10 and random["rounds"][1]["generated_added"] == 0
    )
    # round 0 is the same model on the same initial set for every strategy of a seed
    assert dgaal["rounds"][0]["accuracy"] == random["rounds"][0]["accuracy"]
    # every generating round is judged by the reference T; the others have nothing to judge
    assert all(0.0 <= r["label_fidelity"] <= 1.0 for r in dgaal["rounds"][1:])
    assert not any("label_fidelity" in r for r in random["rounds"])
    assert (finished[1] / "reference_task.pt").exists()


def test_runs_share_the_seed_s_initial_set_and_leave_the_source_alone(finished):
    source, out, results = finished
    initial = []
    for run in results["runs"]:
        with PoolReader(out / run["pool"]) as r:
            initial.append(np.flatnonzero(r.fields["round"] == 0))
            assert r.num_test == 40 and r.has_truth
    np.testing.assert_array_equal(initial[0], initial[1])
    assert initial[0].size == 20
    with PoolReader(source) as r:
        assert r.rounds() == [] and int(np.sum(r.states == State.LABELLED)) == 10


@pytest.mark.slow
def test_a_finished_experiment_runs_no_more_rounds(finished):
    source, out, results = finished

    def no_export(*_args):
        raise AssertionError("a finished experiment must not train again")

    again = experiment(source, out, exporter=no_export).run().to_dict()
    assert [r["rounds"] for r in again["runs"]] == [r["rounds"] for r in results["runs"]]


@pytest.mark.slow
def test_changed_settings_are_refused(finished):
    source, out, _ = finished
    with pytest.raises(ExperimentError, match="step 10 there, 5 asked"):
        experiment(source, out, schedule=Schedule(20, 5, 40)).run().to_dict()
    with pytest.raises(ExperimentError, match="task_epochs 1 there, 2 asked"):
        experiment(source, out, round=dataclasses.replace(FAST, task_epochs=2)).run().to_dict()


@pytest.mark.slow
def test_a_changed_strategy_default_is_refused(finished, monkeypatch):
    """The run records its resolved selection settings, so a new default cannot silently mix
    with runs made under the old one."""
    source, out, _ = finished
    dgaal = strategies.STRATEGIES["dgaal"]
    changed = dataclasses.replace(dgaal.defaults, task_weight=0.123)
    monkeypatch.setitem(
        strategies.STRATEGIES, "dgaal", dataclasses.replace(dgaal, defaults=changed)
    )
    with pytest.raises(ExperimentError, match=r"selection .* there"):
        experiment(source, out).run().to_dict()
    with PoolReader(out / "runs" / "dgaal-seed0" / "pools.h5") as r:
        assert r.rounds()[-1]["selection"]["task_weight"] != 0.123


# ---- interruptions ------------------------------------------------------------------------------
class _Crash(Exception):
    pass


def crashing_exporter(crash_in_round: int):
    """The ONNX exporter, except that generation in ``crash_in_round`` dies (after the oracle's
    labels were committed: the round is left half done in the pool)."""
    real = onnx_exporter(provider="cpu")

    def export(request):
        served = real(request)
        if request.round == crash_in_round:

            def boom(*_a):
                raise _Crash("killed")

            served.generate = boom
        return served

    return export


@pytest.mark.slow
def test_an_interrupted_round_is_finished_on_resume(tmp_path):
    source = tiny_pool(tmp_path / "source.h5")
    out = tmp_path / "exp"
    with pytest.raises(_Crash):
        experiment(source, out, crashing_exporter(2), strategies=("dgaal",)).run().to_dict()
    pool = out / "runs" / "dgaal-seed0" / "pools.h5"
    with PoolReader(pool) as r:
        assert len(r.rounds()) == 1 and r.meta["pending_round"]["round"] == 2
    partial = load_results(out / "results.json")
    assert [x["round"] for x in partial["runs"][0]["rounds"]] == [0, 1]
    assert partial["runs"][0]["complete"] is False
    results = experiment(source, out, strategies=("dgaal",)).run().to_dict()
    rows = results["runs"][0]["rounds"]
    assert [r["labelled"] for r in rows] == [20, 30, 40]
    assert rows[2]["generated_added"] >= 1
    with PoolReader(pool) as r:
        assert r.meta.get("pending_round") is None


@pytest.mark.slow
def test_a_deleted_run_is_redone_and_until_can_be_extended(tmp_path):
    source = tiny_pool(tmp_path / "source.h5")
    out = tmp_path / "exp"
    short = Schedule(initial=20, step=10, until=30)
    first = experiment(source, out, strategies=("random",), schedule=short).run().to_dict()
    assert [r["labelled"] for r in first["runs"][0]["rounds"]] == [20, 30]
    longer = experiment(source, out, strategies=("random",), schedule=SCHEDULE).run().to_dict()
    assert [r["labelled"] for r in longer["runs"][0]["rounds"]] == [20, 30, 40]
    assert longer["runs"][0]["rounds"][:2] == first["runs"][0]["rounds"]


# ---- the command line ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_experiment_with_counts_then_report(tmp_path):
    source = tiny_pool(tmp_path / "source.h5")
    out = tmp_path / "exp"
    args = ["experiment", "--pool", str(source), "--out", str(out), "--strategies", "random",
            "--seeds", "0,1", "--initial", "20", "--step", "10", "--until", "40",
            "--gan-steps", "4", "--task-epochs", "1", "--task-min-steps", "0", "--provider", "cpu",
            "--report"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "random" in res.stdout and "40%" in res.stdout
    results = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["seed"]) for r in results["runs"]] == [("random", 0), ("random", 1)]
    assert (out / "report" / "accuracy.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, [*args[:5], "--strategies", "magic"])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output


@pytest.mark.slow
def test_cli_demo_quick_then_again_without_matplotlib(tmp_path, monkeypatch):
    args = ["demo", "--workdir", str(tmp_path / "demo"), "--quick", "--provider", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    last = res.stdout.strip().splitlines()[-2:]  # the headline, then the seed-by-seed verdict
    assert last[0].startswith("dgaal reached") and "random" in last[0]
    assert last[1].startswith("Seed by seed, dgaal minus random")
    assert "1 seed(s) cannot separate this from T's own noise" in last[1]
    report = tmp_path / "demo" / "report"
    for name in ("accuracy.png", "oracle_queries.png", "selection.png", "summary.md"):
        assert (report / name).exists()
    (report / "summary.md").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the optional extra is missing
    again = CliRunner().invoke(app, args)  # finished: nothing is trained again
    assert again.exit_code == 0, again.output
    assert "finished earlier" in again.stdout and "no plots" in again.stdout
    assert (report / "summary.md").exists()
    assert again.stdout.strip().splitlines()[-2:] == last
