"""One contract every selection strategy honours, plus what each one is for.

The contract suite runs every registered strategy (each D1 strategy also with its settings
turned on one by one) against a selection context of plain arrays; the building blocks of
:mod:`dgaal_core.loop.selection` that make a selection have their own suite.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dgaal_core.errors import EmptyPoolError, PoolExhaustedError
from dgaal_core.loop.selection import (
    entropy,
    fuse_ranks,
    margin,
    select_badge,
    select_coreset,
    select_lowest,
    select_lowest_capped,
    select_random,
    select_spread,
    select_typiclust,
)
from dgaal_core.loop.strategies import (
    STRATEGIES,
    Need,
    SelectionSettings,
    strategy,
    trains_gan,
)

NEUTRAL = SelectionSettings()


class ArrayContext:
    """A :class:`~dgaal_core.loop.strategies.SelectionContext` of plain arrays that records
    what a strategy asked for."""

    def __init__(self, candidates, scores=None, probs=None, feats=None, labelled=None, gen=None):
        n = candidates.size
        rng = np.random.default_rng(n)
        self.candidates = candidates
        self.generated = np.arange(n) % 3 == 0 if gen is None else gen
        self._scores = rng.random(n).astype(np.float32) if scores is None else scores
        self._probs = rng.dirichlet(np.ones(4), n) if probs is None else probs
        self._feats = rng.normal(size=(n, 8)).astype(np.float32) if feats is None else feats
        self._labelled = (
            rng.normal(size=(5, 8)).astype(np.float32) if labelled is None else labelled
        )
        self.asked: set[Need] = set()

    def d1_scores(self):
        self.asked.add(Need.D1_SCORES)
        return self._scores

    def latents(self, ids):
        self.asked.add(Need.LATENTS)
        assert np.isin(ids, self.candidates).all() and np.all(np.diff(ids) > 0)
        return self._feats[np.searchsorted(self.candidates, ids)]

    def task_probs(self):
        self.asked.add(Need.TASK_PROBS)
        return self._probs

    def task_features(self):
        self.asked.add(Need.TASK_FEATURES)
        return self._feats, self._labelled

    def embeddings(self):
        self.asked.add(Need.EMBEDDINGS)
        return self._feats, self._labelled


def _cases() -> list[tuple[str, SelectionSettings]]:
    out = []
    for name, s in STRATEGIES.items():
        out.append((name, s.defaults))
        if Need.D1_SCORES in s.needs(s.defaults):  # each setting of the D1 strategies on its own
            for change in ({"shortlist": 3.0}, {"task_weight": 0.5}, {"generated_cap": 0.2}):
                out.append((name, dataclasses.replace(NEUTRAL, **change)))
    return out


CASES = _cases()


def _candidates(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(10_000, size=n, replace=False)).astype(np.int64)


@pytest.mark.parametrize(
    ("name", "settings"),
    CASES,
    ids=[f"{n}-{s.shortlist}-{s.task_weight}-{s.generated_cap}" for n, s in CASES],
)
class TestEveryStrategy:
    def test_returns_n_unique_sorted_candidate_ids(self, name, settings):
        ctx = ArrayContext(_candidates(200))
        out = strategy(name).select(ctx, 25, np.random.default_rng(0), settings)
        assert out.shape == (25,) and out.dtype == np.int64
        assert np.unique(out).size == 25 and np.all(np.diff(out) > 0)
        assert np.isin(out, ctx.candidates).all()

    def test_asks_only_for_what_it_says_it_needs(self, name, settings):
        ctx = ArrayContext(_candidates(200))
        strategy(name).select(ctx, 25, np.random.default_rng(0), settings)
        assert ctx.asked <= strategy(name).needs(settings)

    def test_same_context_same_rng_same_ids(self, name, settings):
        a = strategy(name).select(
            ArrayContext(_candidates(200)), 25, np.random.default_rng(7), settings
        )
        b = strategy(name).select(
            ArrayContext(_candidates(200)), 25, np.random.default_rng(7), settings
        )
        np.testing.assert_array_equal(a, b)

    def test_whole_pool_and_zero_budget(self, name, settings):
        ctx = ArrayContext(_candidates(12))
        out = strategy(name).select(ctx, 12, np.random.default_rng(0), settings)
        np.testing.assert_array_equal(out, ctx.candidates)
        assert strategy(name).select(ctx, 0, np.random.default_rng(0), settings).size == 0

    def test_budget_larger_than_candidates_is_a_named_error(self, name, settings):
        with pytest.raises(PoolExhaustedError, match="only 12 candidates"):
            strategy(name).select(
                ArrayContext(_candidates(12)), 13, np.random.default_rng(0), settings
            )

    def test_empty_pool_is_a_named_error(self, name, settings):
        ctx = ArrayContext(_candidates(12)[:0])
        with pytest.raises(EmptyPoolError):
            strategy(name).select(ctx, 1, np.random.default_rng(0), settings)


def _inputs(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    candidates = _candidates(n, seed)
    scores = rng.random(n).astype(np.float32)
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    labelled_feats = rng.normal(size=(30, 16)).astype(np.float32)
    return candidates, scores, feats, labelled_feats


BLOCKS = {
    "random": lambda c, s, f, lf, n, seed: select_random(c, n, np.random.default_rng(seed)),
    "coreset": lambda c, s, f, lf, n, seed: select_coreset(c, f, lf, n, chunk=64),
    "lowest-capped": lambda c, s, f, lf, n, seed: select_lowest_capped(
        c, s, n, np.arange(c.size) % 3 == 0, 0.2
    ),
    "spread": lambda c, s, f, lf, n, seed: select_spread(
        c, s, f, n, np.arange(c.size) % 3 == 0, 0.2
    ),
}


@pytest.mark.parametrize("name", BLOCKS)
class TestSelectionBlocks:
    def test_returns_n_unique_sorted_candidate_ids(self, name):
        c, s, f, lf = _inputs()
        out = BLOCKS[name](c, s, f, lf, 25, 0)
        assert out.shape == (25,) and out.dtype == np.int64
        assert np.unique(out).size == 25 and np.all(np.diff(out) > 0)
        assert np.isin(out, c).all()

    def test_same_inputs_same_seed_same_ids(self, name):
        c, s, f, lf = _inputs()
        np.testing.assert_array_equal(
            BLOCKS[name](c, s, f, lf, 25, 7), BLOCKS[name](c, s, f, lf, 25, 7)
        )

    def test_whole_pool_and_zero_budget(self, name):
        c, s, f, lf = _inputs(n=12)
        np.testing.assert_array_equal(BLOCKS[name](c, s, f, lf, 12, 0), c)
        assert BLOCKS[name](c, s, f, lf, 0, 0).size == 0

    def test_budget_larger_than_candidates_is_a_named_error(self, name):
        c, s, f, lf = _inputs(n=12)
        with pytest.raises(PoolExhaustedError, match="only 12 candidates"):
            BLOCKS[name](c, s, f, lf, 13, 0)

    def test_empty_pool_is_a_named_error(self, name):
        c, s, f, lf = _inputs(n=12)
        with pytest.raises(EmptyPoolError):
            BLOCKS[name](c[:0], s[:0], f[:0], lf, 1, 0)


def test_lowest_scores_win_and_ties_go_to_smaller_ids():
    c = np.array([10, 20, 30, 40], dtype=np.int64)
    s = np.array([0.5, 0.1, 0.1, 0.9], dtype=np.float32)
    assert select_lowest(c, s, 1).tolist() == [20]
    assert select_lowest(c, s, 3).tolist() == [20, 30, 10]  # lowest first


def test_select_lowest_puts_nan_last_and_clips_the_count():
    c = np.array([5, 3, 9, 1], dtype=np.int64)  # any order in, the same answer out
    s = np.array([np.nan, 0.2, -np.inf, np.inf])
    assert select_lowest(c, s, 4).tolist() == [9, 3, 1, 5]  # NaN after +inf, never before
    assert select_lowest(c, s, 10).tolist() == [9, 3, 1, 5]  # more than there are: all
    assert select_lowest(c, s, 0).size == 0 and select_lowest(c, s, -3).size == 0
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(select_lowest(c[perm], s[perm], 3), [9, 3, 1])
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        select_lowest(c, s[:2], 1)


def test_entropy_prefers_uncertain_predictions():
    c = np.array([1, 2, 3], dtype=np.int64)
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    ctx = ArrayContext(c, probs=probs)
    assert strategy("entropy").select(ctx, 1, np.random.default_rng(0), NEUTRAL).tolist() == [2]
    assert entropy(probs)[1] == pytest.approx(np.log(2))


def test_margin_prefers_close_calls_over_flat_ones():
    c = np.array([1, 2, 3], dtype=np.int64)
    # row 2 is flat over three classes (high entropy) but its top two are 0.1 apart; row 3 is
    # a near tie between two classes: margin takes row 3, entropy row 2
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.5, 0.48, 0.02]])
    ctx = ArrayContext(c, probs=probs)
    rng = np.random.default_rng(0)
    assert strategy("margin").select(ctx, 1, rng, NEUTRAL).tolist() == [3]
    assert strategy("entropy").select(ctx, 1, rng, NEUTRAL).tolist() == [2]
    np.testing.assert_allclose(margin(probs), [0.85, 0.1, 0.02])


def test_badge_distances_equal_the_explicit_gradient_embeddings():
    """The implicit distances (inner products of the factors) pick what k-means++ on the
    explicit K*F-dimensional embeddings picks: the largest gradient first, then spread."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 40)
    feats = rng.normal(size=(40, 5))
    a = probs.copy()
    a[np.arange(40), a.argmax(1)] -= 1
    g = (a[:, :, None] * feats[:, None, :]).reshape(40, -1)
    c = np.arange(40, dtype=np.int64)
    out = select_badge(c, probs, feats, 1, np.random.default_rng(0))
    assert out.tolist() == [int(np.argmax((g * g).sum(1)))]
    # two tight clusters of confident-but-wrong gradients: 2 picks take one of each
    f2 = np.concatenate(
        [rng.normal(0, 0.01, (20, 2)) + [5, 0], rng.normal(0, 0.01, (20, 2)) + [0, 5]]
    )
    p2 = np.tile([[0.6, 0.4]], (40, 1))
    for seed in range(5):
        out = select_badge(c, p2, f2, 2, np.random.default_rng(seed))
        assert sorted(out // 20) == [0, 1]


def test_typiclust_takes_the_dense_middle_of_uncovered_clusters():
    """Three blobs, one already labelled: the two picks come from the other two, each the
    candidate nearest its blob's dense centre, not an outlier; with no labels at all (a cold
    start) it still spreads over the blobs."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blobs = [c + rng.normal(0, 1, (40, 2)) for c in centres]
    x = np.concatenate(blobs).astype(np.float32)
    c = np.arange(120, dtype=np.int64)
    labelled = centres[:1].astype(np.float32)  # 1 labelled + 2 picks: 3 clusters, the blobs
    out = select_typiclust(c, x, labelled, 2, np.random.default_rng(0))
    assert sorted(out // 40) == [1, 2]
    for i in out:
        blob = x[(i // 40) * 40 : (i // 40 + 1) * 40]
        assert np.linalg.norm(x[i] - blob.mean(0)) < 1.0  # near the middle
    cold = select_typiclust(c, x, np.zeros((0, 2), np.float32), 3, np.random.default_rng(1))
    assert sorted(cold // 40) == [0, 1, 2]


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
    from dgaal_core.loop.context import roc_auc

    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    assert roc_auc(a, b) == pytest.approx(float((a[:, None] > b[None, :]).mean()))
    assert np.isnan(roc_auc(a[:0], b))
    from sklearn.metrics import roc_auc_score

    tied = np.round(np.concatenate([a, b]), 1)  # many ties
    truth = np.r_[np.ones(a.size), np.zeros(b.size)]
    assert roc_auc(tied[: a.size], tied[a.size :]) == pytest.approx(roc_auc_score(truth, tied))


def test_strategy_table_names_every_cli_choice():
    assert set(STRATEGIES) == {
        "dgaal", "dgaal-paper", "vaal", "vaal-coevo", "random", "entropy", "margin", "coreset",
        "badge", "typiclust",
    }  # fmt: skip
    assert strategy("dgaal").generate and strategy("dgaal").coevolve
    assert strategy("dgaal-paper").defaults.to_dict() == {
        "shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0,
    }  # fmt: skip
    assert strategy("dgaal").defaults == SelectionSettings(4.0, 0.3, 0.5)
    assert not strategy("dgaal-paper").retrain_gan and strategy("vaal").retrain_gan
    assert not strategy("vaal").coevolve and not strategy("vaal").generate
    assert strategy("vaal-coevo").coevolve and not strategy("vaal-coevo").generate
    assert [n for n in STRATEGIES if trains_gan(n)] == [
        "dgaal",
        "dgaal-paper",
        "vaal",
        "vaal-coevo",
    ]
    with pytest.raises(ValueError, match="choose one of"):
        strategy("nope")
    with pytest.raises(ValueError, match="shortlist must be a number >= 1"):
        SelectionSettings(shortlist=0.5)
