"""The round (Algorithm 2) in-process on tiny pools: every strategy, seeds, limits, variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pools import class_images

from dgaal_core.errors import EmptyPoolError, PoolExhaustedError
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.oracle import apply_answers
from dgaal_core.loop.round import AwaitingLabels, Round
from dgaal_core.loop.selection import choose_initial
from dgaal_core.loop.state import RoundRecord
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.pool.writer import PoolBuilder, PoolWriter
from export.round_backend import onnx_exporter

FAST = {"gan_steps": 4, "task_epochs": 1, "task_min_steps": 0, "coevolve_steps": 2}


def tiny_pool(path: Path, n: int = 120, seed: int = 0) -> np.ndarray:
    """Digit-like 8x8 images whose brightness pattern depends on the class."""
    images, truth = class_images(n, seed)
    with PoolBuilder(path, (8, 8, 1), ["a", "b", "c", "d"]) as b:
        b.add(images, truth=truth)
        b.add_test(images[:40], truth[:40])
        b.finish(labelled=choose_initial(b.truth, 0.2, np.random.default_rng(seed)))
    return truth


def run_round(path: Path, **kw) -> dict:
    """One round; its record as the pool stores it."""
    cfg = RoundConfig(**{"budget": 10, **FAST, **kw})
    record = Round(path, cfg, onnx_exporter(provider="cpu"), log=lambda *_: None).run()
    assert isinstance(record, RoundRecord), record
    return record.to_dict()


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


def test_budget_beyond_the_candidates_is_refused_or_takes_the_rest_then_stops_clearly(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    with PoolWriter(path) as w:  # leave 5 candidates
        cand = np.flatnonzero(w.field("state") == State.UNLABELLED)
        w.set_state(cand[5:], State.EXCLUDED)
        w.commit()
    before = path.read_bytes()
    with pytest.raises(PoolExhaustedError, match="more than the 5 candidates left"):
        run_round(path, strategy="random", budget=50)
    assert path.read_bytes() == before and not (tmp_path / "p.dgaal" / "round-0001").exists()
    rec = run_round(path, strategy="random", budget=50, take_all=True)
    assert len(rec["selected"]) == 5
    with pytest.raises(EmptyPoolError, match="no candidates left"):
        run_round(path, strategy="random", budget=50)


def _checkpoint(path: Path, n: int, name: str = "checkpoint.pt") -> dict:
    from dgaal_core.model.checkpoint import load_checkpoint

    return load_checkpoint(path.parent / "p.dgaal" / f"round-{n:04d}" / name)


def test_paper_loop_runs_algorithm_1_once_then_selects_with_the_co_evolved_d1(tmp_path):
    import torch

    path = tmp_path / "p.h5"
    tiny_pool(path)
    run_round(path, strategy="dgaal-paper")
    run_round(path, strategy="dgaal-paper")
    first, second = _checkpoint(path, 1), _checkpoint(path, 2, "trained.pt")
    assert first["step"] == FAST["gan_steps"] and first["coevolve_step"] == FAST["coevolve_steps"]
    # round 2 trained nothing before selecting: its models are round 1's co-evolved ones
    assert second["step"] == first["step"] and second["coevolve_step"] == first["coevolve_step"]
    for k, v in first["models"]["d1"].items():
        assert torch.equal(v, second["models"]["d1"][k]), k
    assert _checkpoint(path, 2)["coevolve_step"] == 2 * FAST["coevolve_steps"]


def test_retrain_gan_reruns_algorithm_1_every_round(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    run_round(path, strategy="dgaal-paper", retrain_gan=True)
    run_round(path, strategy="dgaal-paper", retrain_gan=True)
    assert _checkpoint(path, 2, "trained.pt")["step"] == FAST["gan_steps"]  # a fresh run's count
    assert _checkpoint(path, 2, "trained.pt")["coevolve_step"] == 0


def test_round_record_says_what_the_selection_did(tmp_path):
    path = tmp_path / "p.h5"
    truth = tiny_pool(path)
    rec = run_round(path, strategy="dgaal", budget=12)
    sel = np.asarray(rec["selected"])
    assert rec["picked_classes"] == np.bincount(truth[sel], minlength=4).tolist()
    assert rec["generated_share"] == 0.0 and 0.0 <= rec["d1_auc"] <= 1.0
    assert 0.0 < rec["generated_distance"] < 1.0
    lo, hi = rec["generated_ids"]
    assert hi - lo == 12 and lo == 120  # appended after the 120 real rows
    rec2 = run_round(path, strategy="dgaal", budget=12, generated_cap=0.25)
    with PoolReader(path) as r:
        gen = r.fields["origin"][np.asarray(rec2["selected"])] == Origin.GENERATED
    assert gen.sum() <= 3 and rec2["generated_share"] == gen.mean()


def test_a_round_that_takes_every_candidate_still_completes(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    with PoolWriter(path) as w:  # leave 6 candidates, all of which the round takes
        cand = np.flatnonzero(w.field("state") == State.UNLABELLED)
        w.set_state(cand[6:], State.EXCLUDED)
        w.commit()
    rec = run_round(path, strategy="dgaal", budget=6)
    assert len(rec["selected"]) == 6 and rec["generated_added"] == 6
    assert rec["candidates"] == 6  # only the new x_g: co-evolution had nothing to learn on
    rec = run_round(path, strategy="dgaal", budget=6)  # and the next round picks them for free
    assert rec["free_labels"] == 6 and rec["oracle_queries"] == 0


def test_a_round_waiting_for_answers_then_resumed_says_which_options_it_ignores(tmp_path):
    path = tmp_path / "p.h5"
    tiny_pool(path)
    said: list[str] = []

    def round_of(**kw):
        cfg = RoundConfig(**{**FAST, **kw})
        return Round(path, cfg, onnx_exporter(provider="cpu"), log=said.append).run()

    first = round_of(budget=6, oracle="human")
    assert isinstance(first, AwaitingLabels) and first.new and first.queried == 6
    again = round_of(budget=6, oracle="human")  # too early: the same state, not new
    assert isinstance(again, AwaitingLabels) and not again.new and "waiting for 6" in again.message
    with PoolReader(path) as r:
        ids = r.ids(State.QUERIED)
        truth = r.read_truth(ids)
    (tmp_path / "a.csv").write_text(
        "id,label\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, truth, strict=True))
    )
    apply_answers(path, tmp_path / "a.csv")
    record = round_of(budget=9, strategy="random")  # finishes round 1 with its own settings
    assert isinstance(record, RoundRecord) and record.strategy == "dgaal"
    assert len(record.selected) == 6 and record.oracle == "human"
    note = next(m for m in said if m.startswith("resuming round 1"))
    assert "--budget 9" in note and "--strategy random" in note and "round after it" in note
