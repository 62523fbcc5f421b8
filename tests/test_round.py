"""The round (Algorithm 2) in-process on tiny pools: every strategy, seeds, limits, variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pools import class_images

from dgaal_core.errors import EmptyPoolError
from dgaal_core.pool import PoolReader
from dgaal_core.pool_writer import PoolBuilder, PoolWriter
from dgaal_core.round import Round
from dgaal_core.round_parts import RoundConfig
from dgaal_core.schema import Origin, State
from export.round_backend import onnx_exporter

FAST = {"gan_steps": 4, "task_epochs": 1, "task_min_steps": 0, "coevolve_steps": 2}


def tiny_pool(path: Path, n: int = 120, seed: int = 0) -> np.ndarray:
    """Digit-like 8x8 images whose brightness pattern depends on the class."""
    images, truth = class_images(n, seed)
    with PoolBuilder(path, (8, 8, 1), ["a", "b", "c", "d"]) as b:
        b.add(images, truth=truth)
        b.add_test(images[:40], truth[:40])
        b.finish(initial=0.2, rng=np.random.default_rng(seed))
    return truth


def run_round(path: Path, **kw) -> dict:
    cfg = RoundConfig(**{"budget": 10, **FAST, **kw})
    return Round(
        path, cfg, onnx_exporter(provider="cpu"), progress=False, log=lambda *_: None
    ).run()


@pytest.mark.parametrize(
    "strategy", ["dgaal", "vaal", "vaal-coevo", "random", "entropy", "coreset"]
)
def test_each_strategy_runs_a_round_and_logs_it(tmp_path, strategy):
    path = tmp_path / "p.h5"
    truth = tiny_pool(path)
    rec = run_round(path, strategy=strategy)
    assert rec["round"] == 1 and rec["strategy"] == strategy
    assert len(rec["selected"]) == 10 and rec["oracle_queries"] == 10 and rec["free_labels"] == 0
    assert 0.0 <= rec["accuracy"] <= 1.0
    with PoolReader(path) as r:
        assert r.summary()["labelled"] == 24 + 10
        sel = np.asarray(rec["selected"])
        assert np.all(r.states[sel] == State.LABELLED)
        np.testing.assert_array_equal(r.labels[sel], truth[sel])  # the simulated oracle
        gen = r.ids(origin=Origin.GENERATED)
        assert gen.size == (10 if strategy == "dgaal" else 0)
        if gen.size:
            np.testing.assert_array_equal(r.fields["parent"][gen], sel)
            np.testing.assert_array_equal(r.labels[gen], truth[sel])  # x_g inherits y_s
            assert np.all(r.states[gen] == State.UNLABELLED)
        assert r.meta.get("pending_round") is None


def test_same_seed_same_selection_other_seed_other_selection(tmp_path):
    picks = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        path = tmp_path / f"{name}.h5"
        tiny_pool(path)
        picks.append(run_round(path, seed=seed)["selected"])
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_generated_images_are_picked_for_free_in_later_rounds(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    total = 0
    for _ in range(3):
        rec = run_round(path, budget=15)
        assert rec["oracle_queries"] + rec["free_labels"] == 15
        total += rec["oracle_queries"]
    assert rec["oracle_queries_total"] == total
    with PoolReader(path) as r:
        gen = r.ids(origin=Origin.GENERATED)
        parents = r.fields["parent"][gen]
        assert np.all(r.states[parents] == State.LABELLED)
        assert np.all(r.fields["depth"][gen] == r.fields["depth"][parents] + 1)
        assert r.fields["depth"].max() <= 2  # the depth limit


def test_augment_ratio_puts_generated_copies_into_the_labelled_set(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    rec = run_round(path, augment_ratio=1.0)
    with PoolReader(path) as r:
        gen = r.ids(origin=Origin.GENERATED)
        assert gen.size == 10 and np.all(r.states[gen] == State.LABELLED)
        assert rec["labelled"] == 24 + 10 + 10


def test_budget_beyond_the_candidates_takes_the_rest_then_stops_clearly(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    with PoolWriter(path) as w:  # leave 5 candidates
        cand = np.flatnonzero(w.field("state") == State.UNLABELLED)
        w.set_state(cand[5:], State.EXCLUDED)
        w.commit()
    rec = run_round(path, strategy="random", budget=50)
    assert len(rec["selected"]) == 5
    with pytest.raises(EmptyPoolError, match="no candidates left"):
        run_round(path, strategy="random", budget=50)
