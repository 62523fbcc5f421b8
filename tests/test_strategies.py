"""One contract every selection strategy honours, plus what each one is for."""

from __future__ import annotations

import numpy as np
import pytest

from dgaal_core.errors import EmptyPoolError, PoolExhaustedError
from dgaal_core.loop.strategies import (
    STRATEGIES,
    entropy,
    fuse_ranks,
    select_coreset,
    select_lowest,
    select_lowest_capped,
    select_max_entropy,
    select_random,
    select_spread,
    strategy_spec,
)


def _inputs(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    candidates = np.sort(rng.choice(10_000, size=n, replace=False)).astype(np.int64)
    scores = rng.random(n).astype(np.float32)
    logits = rng.normal(size=(n, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    labelled_feats = rng.normal(size=(30, 16)).astype(np.float32)
    return candidates, scores, probs, feats, labelled_feats


SELECTORS = {
    "random": lambda c, s, p, f, lf, n, seed: select_random(c, n, np.random.default_rng(seed)),
    "lowest": lambda c, s, p, f, lf, n, seed: select_lowest(c, s, n),
    "entropy": lambda c, s, p, f, lf, n, seed: select_max_entropy(c, p, n),
    "coreset": lambda c, s, p, f, lf, n, seed: select_coreset(c, f, lf, n, chunk=64),
    "lowest-capped": lambda c, s, p, f, lf, n, seed: select_lowest_capped(
        c, s, n, np.arange(c.size) % 3 == 0, 0.2
    ),
    "spread": lambda c, s, p, f, lf, n, seed: select_spread(
        c, s, f, n, np.arange(c.size) % 3 == 0, 0.2
    ),
}


@pytest.mark.parametrize("name", SELECTORS)
class TestStrategyContract:
    def test_returns_n_unique_sorted_candidate_ids(self, name):
        c, s, p, f, lf = _inputs()
        out = SELECTORS[name](c, s, p, f, lf, 25, 0)
        assert out.shape == (25,) and out.dtype == np.int64
        assert np.unique(out).size == 25 and np.all(np.diff(out) > 0)
        assert np.isin(out, c).all()

    def test_same_inputs_same_seed_same_ids(self, name):
        c, s, p, f, lf = _inputs()
        a = SELECTORS[name](c, s, p, f, lf, 25, 7)
        b = SELECTORS[name](c, s, p, f, lf, 25, 7)
        np.testing.assert_array_equal(a, b)

    def test_whole_pool_and_zero_budget(self, name):
        c, s, p, f, lf = _inputs(n=12)
        np.testing.assert_array_equal(SELECTORS[name](c, s, p, f, lf, 12, 0), c)
        assert SELECTORS[name](c, s, p, f, lf, 0, 0).size == 0

    def test_budget_larger_than_candidates_is_a_named_error(self, name):
        c, s, p, f, lf = _inputs(n=12)
        with pytest.raises(PoolExhaustedError, match="only 12 candidates"):
            SELECTORS[name](c, s, p, f, lf, 13, 0)

    def test_empty_pool_is_a_named_error(self, name):
        c, s, p, f, lf = _inputs(n=12)
        with pytest.raises(EmptyPoolError):
            SELECTORS[name](c[:0], s[:0], p[:0], f[:0], lf, 1, 0)


def test_lowest_scores_win_and_ties_go_to_smaller_ids():
    c = np.array([10, 20, 30, 40], dtype=np.int64)
    s = np.array([0.5, 0.1, 0.1, 0.9], dtype=np.float32)
    assert select_lowest(c, s, 1).tolist() == [20]
    assert select_lowest(c, s, 3).tolist() == [10, 20, 30]


def test_entropy_prefers_uncertain_predictions():
    c = np.array([1, 2, 3], dtype=np.int64)
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    assert select_max_entropy(c, probs, 1).tolist() == [2]
    assert entropy(probs)[1] == pytest.approx(np.log(2))


def test_coreset_covers_far_away_clusters_first():
    # labelled images sit at the origin; candidates form three clusters, one of them far away
    rng = np.random.default_rng(0)
    near = rng.normal(0, 0.1, (50, 2))
    mid = rng.normal(0, 0.1, (50, 2)) + [5, 0]
    far = rng.normal(0, 0.1, (50, 2)) + [0, 20]
    feats = np.concatenate([near, mid, far]).astype(np.float32)
    c = np.arange(150, dtype=np.int64)
    out = select_coreset(c, feats, np.zeros((5, 2), np.float32), 2, chunk=16)
    assert (out >= 100).sum() == 1 and ((out >= 50) & (out < 100)).sum() == 1


def test_cap_limits_generated_picks_while_real_ones_remain():
    c = np.arange(10, dtype=np.int64)
    s = np.arange(10, dtype=np.float32)  # the generated rows 0-4 score lowest
    gen = c < 5
    assert select_lowest_capped(c, s, 4, gen, 0.5).tolist() == [0, 1, 5, 6]
    assert select_lowest_capped(c, s, 4, gen, 1.0).tolist() == [0, 1, 2, 3]
    # only 2 real rows: the cap gives way rather than returning fewer than asked
    assert select_lowest_capped(c[:7], s[:7], 4, gen[:7], 0.0).tolist() == [0, 1, 5, 6]
    f = np.zeros((10, 2), np.float32)
    assert (select_spread(c, s, f, 4, gen, 0.25) < 5).sum() == 1


def test_spread_covers_every_cluster_of_the_shortlist():
    # 3 clusters; cluster 0 holds all the best scores, so the lowest-N would take only it
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 0.1, (20, 2)) + [10 * k, 0] for k in range(3)])
    c = np.arange(60, dtype=np.int64)
    s = np.concatenate([np.linspace(0, 0.1, 20), np.linspace(0.5, 0.6, 20), np.ones(20)])
    gen = np.zeros(60, dtype=bool)
    assert (select_lowest_capped(c, s, 3, gen, 1.0) < 20).all()
    out = select_spread(c, s, f.astype(np.float32), 3, gen, 1.0)
    assert sorted(out // 20) == [0, 1, 2] and 0 in out  # the best-scored image comes first


def test_fused_ranks_move_uncertain_candidates_up():
    d1 = np.array([0.1, 0.2, 0.3, 0.4])
    uncertainty = -np.array([0.0, 0.0, 0.0, 2.0])  # lower = more uncertain for the fusion
    np.testing.assert_array_equal(fuse_ranks(d1, uncertainty, 0.0), d1)
    assert np.argmin(fuse_ranks(d1, uncertainty, 0.9)) == 3
    assert np.argmin(fuse_ranks(d1, uncertainty, 0.2)) == 0


def test_roc_auc_matches_its_definition():
    from dgaal_core.loop.parts import roc_auc

    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    assert roc_auc(a, b) == pytest.approx(float((a[:, None] > b[None, :]).mean()))
    assert np.isnan(roc_auc(a[:0], b))


def test_strategy_table_names_every_cli_choice():
    assert set(STRATEGIES) == {
        "dgaal", "dgaal-paper", "vaal", "vaal-coevo", "random", "entropy", "coreset",
    }  # fmt: skip
    assert strategy_spec("dgaal").generate and strategy_spec("dgaal").coevolve
    assert strategy_spec("dgaal-paper").selection_defaults == {
        "shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0,
    }  # fmt: skip
    assert not strategy_spec("dgaal-paper").retrain_gan and strategy_spec("vaal").retrain_gan
    assert not strategy_spec("vaal").coevolve and not strategy_spec("vaal").generate
    assert strategy_spec("vaal-coevo").coevolve and not strategy_spec("vaal-coevo").generate
    with pytest.raises(ValueError, match="choose one of"):
        strategy_spec("nope")
