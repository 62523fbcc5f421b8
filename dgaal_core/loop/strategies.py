"""Selection strategies as pure array code: candidate ids and scores in, chosen ids out.

Every strategy returns *absolute pool ids* (one index space), sorted ascending, unique, drawn
from the candidates it was given, and is deterministic for a given ``numpy.random.Generator``.
Where the scores come from (D1 through onnxruntime, T's softmax, T's features) is the round's
business; this module never touches a model or a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dgaal_core.errors import EmptyPoolError, PoolExhaustedError

# name -> (score source, co-evolve D1, generate x_g, re-run Algorithm 1 every round).
# "d1" scores come from the exported sampler.
STRATEGIES: dict[str, tuple[str, bool, bool, bool]] = {
    "dgaal": ("d1", True, True, False),
    "dgaal-paper": ("d1", True, True, False),
    "vaal": ("d1", False, False, True),
    "vaal-coevo": ("d1", True, False, False),
    "random": ("none", False, False, False),
    "entropy": ("task_probs", False, False, False),
    "coreset": ("task_features", False, False, False),
}

# Selection settings of the D1 strategies (RoundConfig fields; a round's explicit value wins).
# ``dgaal-paper`` is the literal reading of section 3.2 (the N lowest D1 scores, nothing else);
# ``dgaal`` is the same method with the settings benchmarks/al_curve.py measured best on the
# validation splits (see the README's "What the benchmarks say").
SELECTION_DEFAULTS: dict[str, dict[str, float]] = {
    "dgaal": {"shortlist": 4.0, "task_weight": 0.3, "generated_cap": 0.5},
    "dgaal-paper": {"shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0},
    "vaal": {"shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0},
    "vaal-coevo": {"shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0},
}
NO_SELECTION_SETTINGS = {"shortlist": 1.0, "task_weight": 0.0, "generated_cap": 1.0}


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy needs from the round."""

    name: str
    source: str  # "d1" | "none" | "task_probs" | "task_features"
    coevolve: bool
    generate: bool
    retrain_gan: bool  # re-run Algorithm 1 every round (VAAL); else once, then co-evolve D1

    @property
    def needs_gan(self) -> bool:
        """Whether Algorithm 1 (G1/D1, and G/D2 when generating) must be trained."""
        return self.source == "d1"

    @property
    def selection_defaults(self) -> dict[str, float]:
        """Default shortlist factor, task weight and generated-share cap of this strategy."""
        return dict(SELECTION_DEFAULTS.get(self.name, NO_SELECTION_SETTINGS))


def strategy_spec(name: str) -> StrategySpec:
    """Look a strategy up by name; ``ValueError`` lists the valid names."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return StrategySpec(name, *STRATEGIES[name])


def _check(candidates: np.ndarray, n: int) -> None:
    if candidates.size == 0:
        raise EmptyPoolError("the pool has no candidates left to select from")
    if n > candidates.size:
        raise PoolExhaustedError(
            f"the budget asks for {n} images but only {candidates.size} candidates remain"
        )
    if n < 0:
        raise ValueError("budget must be >= 0")


def select_random(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` candidates uniformly at random (the paper's random baseline)."""
    _check(candidates, n)
    return np.sort(rng.choice(candidates, size=n, replace=False))


def select_lowest(candidates: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the lowest scores (ties broken by smaller id).

    DGAAL/VAAL: D1's score is the probability of "labelled"; the lowest are the images least
    like the labelled pool, i.e. the most informative ones.
    """
    _check(candidates, n)
    if scores.shape != candidates.shape:
        raise ValueError(f"{scores.shape[0]} scores for {candidates.shape[0]} candidates")
    order = np.lexsort((candidates, scores))  # primary key: score; tie-break: id
    return np.sort(candidates[order[:n]])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of class probabilities [N, K]."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def select_max_entropy(candidates: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates whose predicted class distribution has the highest entropy."""
    return select_lowest(candidates, -entropy(probs), n)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def select_coreset(
    candidates: np.ndarray,
    cand_features: np.ndarray,
    labelled_features: np.ndarray,
    n: int,
    chunk: int = 4096,
) -> np.ndarray:
    """k-center greedy (Sener & Savarese): repeatedly take the candidate farthest from the
    current centres (labelled set + chosen so far).

    Memory is O(N) in the candidates: distances to the labelled set are computed in chunks of
    ``chunk`` x ``chunk`` and never as an N x N matrix.
    """
    _check(candidates, n)
    x = cand_features.astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    min_d = np.full(x.shape[0], np.inf, dtype=np.float32)
    lab = labelled_features.astype(np.float32)
    for cs in _chunks(lab.shape[0], chunk):
        c = lab[cs]
        c_sq = np.einsum("ij,ij->i", c, c)
        for xs in _chunks(x.shape[0], chunk):
            d = sq[xs, None] - 2.0 * (x[xs] @ c.T) + c_sq[None, :]
            min_d[xs] = np.minimum(min_d[xs], d.min(axis=1))
    chosen = np.empty(n, dtype=np.int64)
    for k in range(n):
        # no labelled set at all: start from the first candidate (deterministic)
        i = 0 if not np.isfinite(min_d).any() else int(np.argmax(min_d))
        chosen[k] = i
        d = sq - 2.0 * (x @ x[i]) + sq[i]
        min_d = np.minimum(min_d, d)
        min_d[i] = -np.inf  # never twice
    return np.sort(candidates[chosen])


def fuse_ranks(primary: np.ndarray, secondary: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * rank(primary) + weight * rank(secondary)``, ranks scaled to [0, 1].

    Both inputs are "lower is picked first" scores over the same candidates; ranks make scales
    that have nothing in common (D1's probability, T's entropy) comparable, as in TA-VAAL's fusion
    of VAAL's score with a task-model uncertainty.
    """
    if weight <= 0:
        return np.asarray(primary, dtype=np.float64)
    n = max(1, primary.size - 1)
    ra = np.argsort(np.argsort(primary, kind="stable"), kind="stable") / n
    rb = np.argsort(np.argsort(secondary, kind="stable"), kind="stable") / n
    return (1.0 - weight) * ra + weight * rb


def _cap_count(n: int, cap: float) -> int:
    return n if cap >= 1 else int(np.floor(cap * n + 1e-9))


def select_lowest_capped(
    candidates: np.ndarray, scores: np.ndarray, n: int, generated: np.ndarray, cap: float
) -> np.ndarray:
    """The ``n`` lowest-scored candidates, of which at most ``floor(cap * n)`` are generated rows
    (``generated`` is a bool mask over the candidates); generated rows beyond the cap are taken
    only when the real candidates run out. Ascending ids."""
    _check(candidates, n)
    order = np.lexsort((candidates, scores))
    gen = generated[order]
    k = _cap_count(n, cap)
    gen_ok = order[gen][:k]
    real = order[~gen]
    take = np.sort(np.concatenate([gen_ok, real]))  # positions in score order
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    chosen = take[np.argsort(rank[take], kind="stable")][:n]
    if chosen.size < n:  # not enough real rows: fill with the next generated ones
        rest = np.setdiff1d(order[gen], chosen, assume_unique=True)
        rest = rest[np.argsort(rank[rest], kind="stable")]
        chosen = np.concatenate([chosen, rest[: n - chosen.size]])
    return np.sort(candidates[chosen])


def select_spread(
    candidates: np.ndarray,
    scores: np.ndarray,
    features: np.ndarray,
    n: int,
    generated: np.ndarray,
    cap: float,
) -> np.ndarray:
    """``n`` of the (shortlisted) candidates spread out in feature space: the lowest-scored one
    first, then k-center greedy (the candidate farthest from those chosen so far, ties broken by
    score), with at most ``floor(cap * n)`` generated rows while real ones remain. Ascending ids.

    Taking D1's N lowest alone piles the picks onto one region of the latent space (one digit
    class, or the copies of one image); spreading them over a shortlist keeps D1's preference and
    adds the diversity that coreset-style selection has.
    """
    _check(candidates, n)
    x = features.astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    k = _cap_count(n, cap)
    pri = np.argsort(np.lexsort((candidates, scores)))  # priority rank, 0 = lowest score
    min_d = np.full(x.shape[0], np.inf, dtype=np.float64)
    taken = np.zeros(x.shape[0], dtype=bool)
    n_gen = 0
    chosen = []
    for _ in range(n):
        allowed = ~taken
        if n_gen >= k and (allowed & ~generated).any():
            allowed &= ~generated
        # farthest first; before any centre exists every distance is inf, so the score decides
        key = np.where(allowed, min_d, -np.inf)
        best = np.flatnonzero(key == key.max())
        i = int(best[np.argmin(pri[best])])
        chosen.append(i)
        taken[i] = True
        n_gen += int(generated[i])
        d = sq - 2.0 * (x @ x[i]) + sq[i]
        min_d = np.minimum(min_d, np.maximum(d, 0.0))
    return np.sort(candidates[np.asarray(chosen, dtype=np.int64)])
