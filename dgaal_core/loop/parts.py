"""Pieces of the active-learning round: the interfaces it serves models through, pool-backed
data sources and T-based scores (its configuration, :class:`RoundConfig`, lives in the torch-free
:mod:`.round_config` and is re-exported here).

The round (``dgaal_core.round``) depends on :class:`ServedModels` only; the CLI hands it the
onnxruntime implementation from ``export/`` (imports go one way: cli -> export -> dgaal_core).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dgaal_core.loop.config import RoundConfig
from dgaal_core.model.config import RunConfig
from dgaal_core.model.data import to_model_input
from dgaal_core.model.networks import ConvClassifier, Generator
from dgaal_core.model.training import resolve_device
from dgaal_core.pool.reader import PoolReader

__all__ = [
    "Exporter", "PoolSource", "RoundConfig", "ServedModels", "latents", "roc_auc", "task_outputs",
]  # fmt: skip

# Candidate/labelled images are held in memory up to this size; beyond it they are read from the
# pool file per batch (HDF5 random reads are slower, but memory stays bounded).
IN_MEMORY_BYTES = 2 << 30


class ServedModels(Protocol):
    """The exported sampler and generator, as the round uses them."""

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1(G1(x)) for the pool rows ``ids`` (in that order)."""
        ...

    def generate(self, images: np.ndarray, seed: int, spread: float = 0.05) -> np.ndarray:
        """x_g = G(x) as uint8 images, with noise-head scales drawn in ``[1 - spread,
        1 + spread]`` from ``seed``."""
        ...


# (trainer's models, run config, round folder, round number, pool path) -> served models
Exporter = Callable[[Any, RunConfig, Path, int, Path], ServedModels]


class PoolSource:
    """A :class:`~dgaal_core.data.DataSource` over pool rows ``ids``: in memory when small,
    read from the pool file per batch otherwise."""

    def __init__(self, reader: PoolReader, ids: np.ndarray, labels: np.ndarray | None = None):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._reader = reader
        nbytes = self.ids.size * int(np.prod(reader.image_shape))
        self._images: np.ndarray | None = None
        if nbytes <= IN_MEMORY_BYTES:
            self._images = (
                reader.read_images(self.ids)
                if self.ids.size
                else np.zeros((0, *reader.image_shape), np.uint8)
            )

    def __len__(self) -> int:
        return int(self.ids.size)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (and labels) at positions ``indices`` of this source."""
        images = (
            self._images[indices]
            if self._images is not None
            else self._reader.read_images(self.ids[indices])
        )
        return images, None if self.labels is None else self.labels[indices]


@torch.no_grad()
def task_outputs(
    model: ConvClassifier,
    reader: PoolReader,
    ids: np.ndarray,
    *,
    batch_size: int = 512,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """T's softmax probabilities [N, K] and penultimate features [N, F] for pool rows ``ids``
    (ascending), streamed from the pool file."""
    dev = resolve_device(device)
    model.to(dev).eval()
    probs, feats = [], []
    for _, images in reader.iter_batches(ids, batch_size):
        x = to_model_input(images, dev)
        f = model.features(x)
        probs.append(torch.softmax(model.classifier(f), dim=1))  # (B, K)
        feats.append(f)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return (
        torch.cat(probs).float().cpu().numpy(),
        torch.cat(feats).float().flatten(1).cpu().numpy(),
    )


@torch.no_grad()
def latents(g: Generator, reader: PoolReader, ids: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """G1's latent z [N, z_dim] (eval mode, as the sampler sees it) for pool rows ``ids``
    (ascending)."""
    was = g.training
    g.cpu().eval()
    out = [g.encode(to_model_input(images)) for _, images in reader.iter_batches(ids, batch_size)]
    g.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores: P(a positive scores above a negative), ties half
    (Mann-Whitney U); NaN when either side is empty."""
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    both = np.concatenate([positive, negative]).astype(np.float64)
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size, dtype=np.float64)
    ranks[order] = np.arange(1, both.size + 1)
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]  # average ranks over ties
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))
