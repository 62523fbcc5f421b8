"""T as a linear head on frozen embeddings: multinomial logistic regression (``--task-model
linear``; ``linear-ssl`` adds the candidates with propagated pseudo-labels,
:mod:`dgaal_core.model.propagation`).

Seconds per round where the end-to-end T takes minutes, and on a good encoder's features far
more accurate with few labels (a frozen ImageNet MobileNetV2 with a linear head: about 70% on
CIFAR-10 with 1,000 labels, against 50% for the small CNN trained from scratch). The features
are standardised with the labelled rows' mean and spread; the L2 strength is chosen per fit by
stratified k-fold cross-validation on the labelled rows alone (held-out log-loss over a fixed
grid), so nothing is tuned on a test split and nothing is tuned to one data set. Training is
full-batch L-BFGS (scipy) from zero weights: deterministic, no seed needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dgaal_core.errors import EmptyPoolError

# per-sample weight of 0.5 * ||W||^2 in the mean loss, strongest first: each fit of the
# cross-validation starts from the previous (stronger) one's solution, which converges fastest
L2_GRID = (1.0, 1e-1, 1e-2, 1e-3)
FOLDS = 3
DEFAULT_L2 = 1e-2  # when the labelled set is too small to cross-validate
CV_ROWS = 5000  # the cross-validation sees at most this many labelled rows (a seeded stratified
# subset beyond): the choice of L2 settles long before, and fitting 12 times on 20,000 rows would
# cost minutes per round
MAX_ITER = 100
TOLERANCE = 1e-4  # on the gradient's largest entry: well below what changes a prediction


@dataclass(frozen=True)
class LinearHead:
    """Standardisation plus a linear layer: ``softmax(((x - mean) / scale) @ weight + bias)``."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weight: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    l2: float

    def features(self, x: np.ndarray) -> np.ndarray:
        """The standardised embeddings [N, D] (what the head is linear in)."""
        return ((np.asarray(x, np.float32) - self.mean) / self.scale).astype(np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.features(x) @ self.weight + self.bias

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K]."""
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("mean", "scale", "weight", "bias")} | {"l2": self.l2}


Start = tuple[np.ndarray, np.ndarray] | None


def _fit(
    z: np.ndarray,
    y: np.ndarray,
    k: int,
    l2: float,
    start: Start = None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights [D, K] and bias [K] minimising the (``weights``-weighted) mean cross-entropy +
    l2 / 2 * ||W||^2, from ``start`` (zeros when None).

    The loss and its gradient in numpy (two matrix products per evaluation) under scipy's
    L-BFGS-B: several times faster than autograd for a problem this skinny (D x 10)."""
    from scipy.optimize import minimize

    z = np.ascontiguousarray(z, dtype=np.float32)
    n, d = z.shape
    onehot = np.zeros((n, k), np.float32)
    onehot[np.arange(n), y] = 1.0
    # per-sample weights summing to 1 (the plain mean when none are given)
    share = (
        np.full((n, 1), 1.0 / n, np.float32)
        if weights is None
        else (np.asarray(weights, np.float32) / float(np.sum(weights)))[:, None]
    )

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: d * k].reshape(d, k).astype(np.float32)
        logits = z @ w + theta[d * k :].astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        total = e.sum(axis=1, keepdims=True)
        value = float(np.sum(share[:, 0] * (np.log(total[:, 0]) - logits[onehot > 0])))
        g = (e / total - onehot) * share  # d loss / d logits
        grad_w = z.T @ g + l2 * w
        out = np.concatenate([grad_w.ravel(), g.sum(axis=0)]).astype(np.float64)
        return value + 0.5 * l2 * float(np.sum(w * w)), out

    w0, b0 = start if start is not None else (np.zeros((d, k)), np.zeros(k))
    theta0 = np.concatenate([np.ravel(w0), np.ravel(b0)]).astype(np.float64)
    options = {"maxiter": MAX_ITER, "gtol": TOLERANCE}
    theta = minimize(loss, theta0, jac=True, method="L-BFGS-B", options=options).x
    return theta[: d * k].reshape(d, k).astype(np.float32), theta[d * k :].astype(np.float32)


def _folds(y: np.ndarray, folds: int) -> np.ndarray:
    """A fold number per sample, stratified: each class's samples dealt round-robin in order
    (deterministic, so the same labelled set always gives the same choice)."""
    out = np.empty(y.size, np.int64)
    for c in np.unique(y):
        ids = np.flatnonzero(y == c)
        out[ids] = np.arange(ids.size) % folds
    return out


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None))))


def choose_l2(z: np.ndarray, y: np.ndarray, k: int, folds: int = FOLDS) -> float:
    """The L2 strength of :data:`L2_GRID` with the lowest held-out log-loss over stratified
    ``folds`` of the labelled rows (at most :data:`CV_ROWS` of them; :data:`DEFAULT_L2` when a
    class has fewer rows than folds)."""
    if np.bincount(y, minlength=k)[np.unique(y)].min() < folds:
        return DEFAULT_L2
    if y.size > CV_ROWS:  # every (CV_ROWS / n)-th row of each class, in order: deterministic
        keep = np.sort(np.concatenate([
            ids[np.linspace(0, ids.size - 1, max(folds, round(ids.size * CV_ROWS / y.size)))
                .astype(np.int64)]
            for ids in (np.flatnonzero(y == c) for c in np.unique(y))
        ]))  # fmt: skip
        z, y = z[keep], y[keep]
    fold = _folds(y, folds)
    losses = []
    starts: list[Start] = [None] * folds
    for l2 in L2_GRID:
        total = 0.0
        for f in range(folds):
            train, held = fold != f, fold == f
            w, b = _fit(z[train], y[train], k, l2, starts[f])
            starts[f] = (w, b)
            logits = z[held] @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            total += _log_loss(p / p.sum(axis=1, keepdims=True), y[held]) * held.sum()
        losses.append(total / y.size)
    return float(L2_GRID[int(np.argmin(losses))])


def fit_linear_head(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    l2: float | None = None,
    candidates: np.ndarray | None = None,
) -> LinearHead:
    """A :class:`LinearHead` on embeddings ``x`` [N, D] with labels ``y`` in ``0..K-1``;
    ``l2`` None chooses it by cross-validation (:func:`choose_l2`, labelled rows only).

    With ``candidates`` (their embeddings [M, D]) the head is semi-supervised: they join the fit
    with the pseudo-labels and weights of :func:`dgaal_core.model.propagation.pseudo_labels`
    (a labelled row weighs 1, a candidate its confidence)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if y.size < 2:
        raise EmptyPoolError(f"the linear head needs at least 2 labelled images, got {y.size}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)  # constant features stay 0
    z = (x - mean) / scale
    chosen = choose_l2(z, y, num_classes) if l2 is None else float(l2)
    if candidates is None or len(candidates) == 0:
        w, b = _fit(z, y, num_classes, chosen)
    else:
        from dgaal_core.model.propagation import pseudo_labels

        x_u = np.asarray(candidates, np.float32)
        y_u, w_u = pseudo_labels(x, y, x_u, num_classes)
        w, b = _fit(
            np.concatenate([z, (x_u - mean) / scale]), np.concatenate([y, y_u]), num_classes,
            chosen, weights=np.concatenate([np.ones(y.size, np.float32), w_u]),
        )  # fmt: skip
    return LinearHead(mean.astype(np.float32), scale, w, b, chosen)
