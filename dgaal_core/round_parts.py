"""Pieces of the active-learning round: its configuration, the interfaces it serves models
through, pool-backed data sources and T-based scores.

The round (``dgaal_core.round``) depends on :class:`ServedModels` only; the CLI hands it the
onnxruntime implementation from ``export/`` (imports go one way: cli -> export -> dgaal_core).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import ConfigError, RunConfig, preset
from .data import to_model_input
from .models import ConvClassifier
from .pool import PoolReader
from .strategies import strategy_spec
from .training import resolve_device

# Candidate/labelled images are held in memory up to this size; beyond it they are read from the
# pool file per batch (HDF5 random reads are slower, but memory stays bounded).
IN_MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class RoundConfig:
    """What one ``dgaal round`` does; stored with every round record (``to_dict``)."""

    strategy: str = "dgaal"
    budget: float = 0.05  # < 1: fraction of the real training images; >= 1: a count
    oracle: str = "auto"  # auto: simulated when the pool has ground truth, else human
    preset: str = "small"
    seed: int = 0
    device: str = "auto"
    gan_steps: int | None = None  # override the preset's Algorithm 1 iterations
    gan_epochs: float | None = None  # or its passes over the pools
    task_epochs: int | None = None
    coevolve_steps: int | None = None
    depth_limit: int = 2  # generated images of this depth are not used as parents again
    augment_ratio: float = 0.0  # section 4.3.2: share of x_g that goes straight to labelled
    score_batch: int = 512

    def __post_init__(self) -> None:
        strategy_spec(self.strategy)  # ValueError on an unknown name
        if self.oracle not in ("auto", "simulated", "human"):
            raise ConfigError(f"oracle must be auto, simulated or human, got {self.oracle!r}")
        if self.budget <= 0:
            raise ConfigError(f"budget must be > 0 (a fraction < 1 or a count), got {self.budget}")
        if not 0 <= self.augment_ratio <= 1:
            raise ConfigError(f"augment_ratio must lie in [0, 1], got {self.augment_ratio}")
        if self.depth_limit < 1:
            raise ConfigError(f"depth_limit must be >= 1, got {self.depth_limit}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def run_config(self, image_shape: tuple[int, int, int], num_classes: int) -> RunConfig:
        """The model/training configuration for this round: the preset plus the overrides."""
        overrides: dict[str, Any] = {"seed": self.seed, "device": self.device}
        for name in ("gan_steps", "gan_epochs", "task_epochs", "coevolve_steps"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        return preset(self.preset, image_shape, num_classes, **overrides)

    def budget_count(self, real_rows: int) -> int:
        """The number of images to select this round."""
        if self.budget < 1:
            return max(1, round(self.budget * real_rows))
        return int(self.budget)


class ServedModels(Protocol):
    """The exported sampler and generator, as the round uses them."""

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1(G1(x)) for the pool rows ``ids`` (in that order)."""
        ...

    def generate(self, images: np.ndarray, seed: int) -> np.ndarray:
        """x_g = G(x) as uint8 images, with noise-head scales drawn from ``seed``."""
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
