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

from .errors import EmptyPoolError, PoolExhaustedError

# name -> (score source, co-evolve D1, generate x_g). "d1" scores come from the exported sampler.
STRATEGIES: dict[str, tuple[str, bool, bool]] = {
    "dgaal": ("d1", True, True),
    "vaal": ("d1", False, False),
    "vaal-coevo": ("d1", True, False),
    "random": ("none", False, False),
    "entropy": ("task_probs", False, False),
    "coreset": ("task_features", False, False),
}


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy needs from the round."""

    name: str
    source: str  # "d1" | "none" | "task_probs" | "task_features"
    coevolve: bool
    generate: bool

    @property
    def needs_gan(self) -> bool:
        """Whether Algorithm 1 (G1/D1, and G/D2 when generating) must be trained."""
        return self.source == "d1"


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
