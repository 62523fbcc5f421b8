"""Selection as pure array code: ids and scores in, chosen ids out (numpy only).

One index space: every function takes and returns *absolute pool ids*. Randomness comes in as a
``numpy.random.Generator``. The strategies (:mod:`dgaal_core.loop.strategies`) are built from
these pieces; the exported sampler's runtime uses :func:`select_lowest` too.
"""

from __future__ import annotations

import numpy as np

from dgaal_core.errors import PoolUpdateError
from dgaal_core.values import size_of


def choose_initial(
    truth: np.ndarray, initial: float, rng: np.random.Generator, stratified: bool = True
) -> np.ndarray:
    """Ids to reveal as the initial labelled set, ascending.

    ``initial`` < 1 is a fraction of the rows, >= 1 a count. Stratified selection takes the same
    share of every class (largest remainders), so small pools still see each class.
    """
    n = truth.shape[0]
    count = size_of(initial, n)
    if count < 0 or count > n:
        raise PoolUpdateError(f"--initial {initial} asks for {count} of {n} images")
    if count == 0:
        return np.zeros(0, np.int64)
    if not stratified:
        return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
    classes, counts = np.unique(truth, return_counts=True)
    exact = counts * (count / n)
    take = np.floor(exact).astype(int)
    rest = count - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:rest]] += 1
    chosen = [
        rng.choice(np.flatnonzero(truth == c), size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
