"""Pseudo-labels for the candidates by label propagation on a kNN graph of the embeddings, for
the semi-supervised head (``--task-model linear-ssl``).

The method of Iscen et al., "Label Propagation for Deep Semi-supervised Learning" (CVPR 2019),
on frozen features: cosine similarities of the (standardised, PCA-reduced, L2-normalised)
embeddings, each row's k nearest neighbours with weight ``s ** 3``, the graph made symmetric and
normalised ``D^-1/2 W D^-1/2``; ``(I - alpha W) F = Y`` solved per class by conjugate gradient
(Zhou et al.'s label spreading), ``Y`` the labelled rows' classes, each class's column divided by
its count; a candidate's pseudo-label is its row's argmax, its weight ``1 - H(p) / log K`` of the
row normalised (confident rows count, ambiguous ones hardly). The settings are the papers', fixed
here: nothing is tuned to a data set, and no test row enters the graph (T stays inductive).
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 10  # k of the kNN graph (Iscen et al.: 50 on 50,000 images; 10 for pools of 1e3-1e5)
POWER = 3  # similarity ** POWER on the kept edges
ALPHA = 0.99
CG_ITERATIONS = 20
PCA_DIMS = 128  # the graph's features: enough for cosine neighbours, 10x cheaper than 1280
BLOCK = 2048  # rows of the similarity matrix computed at once, at most ...
BLOCK_FLOATS = 1 << 25  # ... so that one block holds 32M similarities (128 MB, plus its indices)


def graph_features(x: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """Rows standardised, projected on their ``dims`` leading principal axes and L2-normalised
    (deterministic: an eigendecomposition of the covariance)."""
    x = np.asarray(x, np.float32)
    spread = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(spread > 1e-6, spread, 1.0)
    if z.shape[1] > dims:
        _, vecs = np.linalg.eigh((z.T @ z).astype(np.float64))
        z = z @ vecs[:, ::-1][:, :dims].astype(np.float32)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def knn_graph(z: np.ndarray, k: int = NEIGHBOURS):  # -> scipy.sparse.csr_matrix
    """The symmetric, normalised affinity ``D^-1/2 W D^-1/2`` of each row's ``k`` nearest
    neighbours by cosine similarity (rows of ``z`` unit length), weights ``s ** POWER``."""
    from scipy import sparse

    n = z.shape[0]
    k = max(1, min(k, n - 1))
    rows, cols, vals = [], [], []
    block = max(16, min(BLOCK, BLOCK_FLOATS // max(1, n)))  # memory stays flat in n
    for start in range(0, n, block):
        sims = z[start : start + block] @ z.T
        idx = np.arange(start, min(start + block, n))
        sims[np.arange(idx.size), idx] = -np.inf  # no self-loops
        nearest = np.argpartition(sims, n - k, axis=1)[:, n - k :]  # the k largest, no copy
        rows.append(np.repeat(idx, k))
        cols.append(nearest.ravel())
        vals.append(np.clip(np.take_along_axis(sims, nearest, axis=1).ravel(), 0, None) ** POWER)
    w = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    w = w + w.T  # an edge either way counts both ways
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv = sparse.diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    return (inv @ w @ inv).tocsr()


def propagate(
    z: np.ndarray, labelled: np.ndarray, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Class scores [N, K] of every row of ``z`` from the rows ``labelled`` (positions into
    ``z``) with ``labels``: label spreading on :func:`knn_graph`, solved by conjugate gradient."""
    from scipy import sparse
    from scipy.sparse.linalg import cg

    n = z.shape[0]
    w = knn_graph(z)
    system = sparse.identity(n, format="csr") - ALPHA * w
    out = np.zeros((n, num_classes), np.float64)
    for c in range(num_classes):
        rows = labelled[labels == c]
        if rows.size == 0:
            continue  # a class with no label gets no score
        y = np.zeros(n)
        y[rows] = 1.0 / rows.size
        out[:, c], _ = cg(system, y, maxiter=CG_ITERATIONS)
    return out


def pseudo_labels(
    x_labelled: np.ndarray, y: np.ndarray, x_candidates: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' pseudo-labels and weights in [0, 1] (``1 - H(p) / log K``), from the
    labelled rows ``x_labelled`` with labels ``y`` (see the module docstring)."""
    m = x_candidates.shape[0]
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    z = graph_features(np.concatenate([x_labelled, x_candidates]))
    scores = propagate(z, np.arange(y.size), np.asarray(y, np.int64), num_classes)[y.size :]
    p = np.clip(scores, 0, None)
    total = p.sum(axis=1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    weight = 1.0 - entropy / np.log(max(2, num_classes))
    return p.argmax(axis=1).astype(np.int64), np.clip(weight, 0, 1).astype(np.float32)
