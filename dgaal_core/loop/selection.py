"""Selection as pure array code: ids and scores in, chosen ids out (numpy only).

One index space: every function takes and returns *absolute pool ids*. Randomness comes in as a
``numpy.random.Generator``. The strategies (:mod:`dgaal_core.loop.strategies`) are built from
these pieces; the exported sampler's runtime uses :func:`select_lowest` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from dgaal_core.errors import EmptyPoolError, PoolExhaustedError, PoolUpdateError
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


def check_budget(candidates: np.ndarray, n: int) -> None:
    """A strategy's contract on its budget: at least one candidate, ``0 <= n <= candidates``."""
    if candidates.size == 0:
        raise EmptyPoolError("the pool has no candidates left to select from")
    if n > candidates.size:
        raise PoolExhaustedError(
            f"the budget asks for {n} images but only {candidates.size} candidates remain"
        )
    if n < 0:
        raise ValueError("budget must be >= 0")


def score_order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` from the lowest score to the highest: ties broken by the smaller id,
    NaN scores last (after every number). This is the one ordering rule of dgaal's selection."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores)
    if ids.shape != scores.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must be equal 1-d shapes")
    key = np.where(np.isnan(scores), np.inf, scores).astype(np.float64)
    # a NaN sorts after +inf: the position among equal keys is decided by NaN-ness, then id
    return np.lexsort((ids, np.isnan(scores), key))


def select_lowest(ids: np.ndarray | Sequence[int], scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` ids with the lowest scores, in :func:`score_order` (lowest first).

    ``n`` is clipped to ``[0, len(ids)]``: asking for more than there are gives all of them.
    Deterministic whatever the input order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores)
    if ids.shape != scores.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must be equal 1-d shapes")
    n = max(0, min(int(n), ids.size))
    if n == 0:
        return np.zeros(0, np.int64)
    if n < ids.size:  # preselect everything <= the n-th score (ties included), then sort exactly
        key = np.where(np.isnan(scores), np.inf, scores).astype(np.float64)
        kth = np.partition(key, n - 1)[n - 1]
        keep = np.flatnonzero(key <= kth)
        ids, scores = ids[keep], scores[keep]
    return ids[score_order(ids, scores)[:n]]


def select_random(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` candidates uniformly at random (the paper's random baseline), ascending."""
    check_budget(candidates, n)
    return np.sort(rng.choice(candidates, size=n, replace=False))


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of class probabilities [N, K]."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """The gap between each row's two most likely classes (small = uncertain), [N]."""
    if probs.shape[1] < 2:
        return np.zeros(probs.shape[0])
    top = np.partition(probs.astype(np.float64), probs.shape[1] - 2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def select_badge(
    candidates: np.ndarray,
    probs: np.ndarray,
    features: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings
    ``g_i = (p_i - onehot(argmax p_i)) (x) f_i`` of the last layer. Ascending ids.

    The K*F-dimensional embeddings are never formed: ``<g_i, g_j> = <a_i, a_j> <f_i, f_j>``,
    so each pick costs one pass over the features (O(N (K + F))). The first centre is the
    largest gradient, as in the paper's code; then each is drawn with probability proportional
    to the squared distance to the nearest centre so far.
    """
    check_budget(candidates, n)
    a = probs.astype(np.float64).copy()
    a[np.arange(a.shape[0]), a.argmax(1)] -= 1.0
    f = features.astype(np.float64)
    norm = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", f, f)  # ||g_i||^2
    chosen = np.empty(n, dtype=np.int64)
    min_d = np.full(a.shape[0], np.inf)
    i = int(np.argmax(norm))
    for k in range(n):
        chosen[k] = i
        d = norm + norm[i] - 2.0 * (a @ a[i]) * (f @ f[i])
        min_d = np.minimum(min_d, np.maximum(d, 0.0))
        min_d[chosen[: k + 1]] = 0.0
        if k + 1 == n:
            break
        total = min_d.sum()
        if total <= 0:  # every candidate equals a centre: the rest at random
            left = np.setdiff1d(np.arange(a.shape[0]), chosen[: k + 1])
            chosen[k + 1 :] = rng.choice(left, n - k - 1, replace=False)
            break
        i = int(rng.choice(a.shape[0], p=min_d / total))
    return np.sort(candidates[chosen])


TYPICLUST_MAX_CLUSTERS = 500  # TypiClust's caps (Hacohen et al. 2022, their code's defaults)
TYPICLUST_MIN_CLUSTER = 5
TYPICLUST_NEIGHBOURS = 20


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20) -> np.ndarray:
    """Cluster of each row of ``x`` under k-means with ``k`` centres (k-means++ seeding from
    ``rng``, then Lloyd's iterations until nothing moves or ``iterations``); [N] ints."""
    x = x.astype(np.float32)
    n = x.shape[0]
    k = max(1, min(k, n))
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), np.float32)
    first = int(rng.integers(n))
    centres[0] = x[first]
    d = np.maximum(sq - 2 * (x @ x[first]) + sq[first], 0)
    for j in range(1, k):
        total = float(d.sum())
        pick = int(rng.choice(n, p=d / total)) if total > 0 else int(rng.integers(n))
        centres[j] = x[pick]
        d = np.minimum(d, np.maximum(sq - 2 * (x @ x[pick]) + sq[pick], 0))
    labels = np.full(n, -1)
    for _ in range(iterations):
        c_sq = np.einsum("ij,ij->i", centres, centres)
        new = np.empty(n, np.int64)
        for cs in _chunks(n, 4096):
            new[cs] = np.argmin(c_sq[None, :] - 2 * (x[cs] @ centres.T), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        keep = counts > 0  # an emptied centre stays where it was
        centres[keep] = sums[keep] / counts[keep, None]
    return labels


def typicality(x: np.ndarray, neighbours: int) -> np.ndarray:
    """TypiClust's typicality of each row of ``x``: 1 / (mean distance to its ``neighbours``
    nearest other rows + 1e-5), exact, in chunks."""
    x = x.astype(np.float32)
    n = x.shape[0]
    k = max(1, min(neighbours, n - 1))
    if n < 2:
        return np.ones(n)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n)
    for cs in _chunks(n, 1024):
        d = np.maximum(sq[cs, None] - 2 * (x[cs] @ x.T) + sq[None, :], 0)
        d[np.arange(d.shape[0]), np.arange(cs.start, cs.start + d.shape[0])] = np.inf  # self
        near = np.sqrt(np.partition(d, k - 1, axis=1)[:, :k])
        out[cs] = 1.0 / (near.mean(axis=1) + 1e-5)
    return out


def select_typiclust(
    candidates: np.ndarray,
    cand_features: np.ndarray,
    labelled_features: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022), for low budgets and cold starts: k-means over candidates
    and labelled rows together into ``min(labelled + n, 500)`` clusters; clusters of more than
    5 rows ordered by fewest labelled rows, then largest; from each in turn the candidate of
    highest typicality (its 20 nearest neighbours within the cluster). Ascending ids.

    Works without a single labelled row (a pool's first round picks from the embeddings alone).
    """
    check_budget(candidates, n)
    x = np.concatenate([cand_features, labelled_features]).astype(np.float32)
    k = min(labelled_features.shape[0] + n, TYPICLUST_MAX_CLUSTERS, x.shape[0])
    labels = kmeans(x, k, rng)
    m = candidates.size
    sizes = np.bincount(labels, minlength=k)
    have = np.bincount(labels[m:], minlength=k)
    ranked = [int(c) for c in np.lexsort((-sizes, have))]  # fewest labelled, then largest
    order = [c for c in ranked if sizes[c] > TYPICLUST_MIN_CLUSTER] or ranked
    free = np.ones(m, dtype=bool)
    chosen: list[int] = []
    turn = 0
    while len(chosen) < n:
        if not order:  # every listed cluster is used up: the others, in the same order
            order = [c for c in ranked if free[labels[:m] == c].any()]
            turn = 0
        cluster = order[turn % len(order)]
        members = np.flatnonzero(labels == cluster)  # typicality over the whole cluster
        pickable = members[(members < m)]
        pickable = pickable[free[pickable]]
        if pickable.size == 0:
            order.remove(cluster)
            continue
        turn += 1
        typ = typicality(x[members], min(TYPICLUST_NEIGHBOURS, max(1, members.size // 2)))
        typ[~np.isin(members, pickable)] = -np.inf
        best = int(members[int(np.argmax(typ))])
        chosen.append(best)
        free[best] = False
    return np.sort(candidates[np.asarray(chosen, dtype=np.int64)])


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
    current centres (labelled set + chosen so far). Ascending ids.

    Memory is O(N) in the candidates: distances to the labelled set are computed in chunks of
    ``chunk`` x ``chunk`` and never as an N x N matrix.
    """
    check_budget(candidates, n)
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


def ranks(scores: np.ndarray) -> np.ndarray:
    """Ordinal ranks 0..N-1 of ``scores`` (ties in input order), as int64."""
    order = np.argsort(scores, kind="stable")
    out = np.empty(order.size, dtype=np.int64)
    out[order] = np.arange(order.size)
    return out


def fuse_ranks(primary: np.ndarray, secondary: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * rank(primary) + weight * rank(secondary)``, ranks scaled to [0, 1].

    Both inputs are "lower is picked first" scores over the same candidates; ranks make scales
    that have nothing in common (D1's probability, T's entropy) comparable, as in TA-VAAL's fusion
    of VAAL's score with a task-model uncertainty.
    """
    if weight <= 0:
        return np.asarray(primary, dtype=np.float64)
    n = max(1, primary.size - 1)
    return (1.0 - weight) * (ranks(primary) / n) + weight * (ranks(secondary) / n)


def _cap_count(n: int, cap: float) -> int:
    return n if cap >= 1 else int(np.floor(cap * n + 1e-9))


def select_lowest_capped(
    candidates: np.ndarray, scores: np.ndarray, n: int, generated: np.ndarray, cap: float
) -> np.ndarray:
    """The ``n`` lowest-scored candidates, of which at most ``floor(cap * n)`` are generated rows
    (``generated`` is a bool mask over the candidates); generated rows beyond the cap are taken
    only when the real candidates run out. Ascending ids."""
    check_budget(candidates, n)
    order = score_order(candidates, scores)
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
    check_budget(candidates, n)
    x = features.astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    k = _cap_count(n, cap)
    pri = np.argsort(score_order(candidates, scores))  # priority rank, 0 = lowest score
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
