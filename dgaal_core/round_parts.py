"""Pieces of the active-learning round: its configuration, the interfaces it serves models
through, pool-backed data sources and T-based scores.

The round (``dgaal_core.round``) depends on :class:`ServedModels` only; the CLI hands it the
onnxruntime implementation from ``export/`` (imports go one way: cli -> export -> dgaal_core).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import ConfigError, RunConfig, preset
from .data import to_model_input
from .models import ConvClassifier, Generator
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
    task_min_steps: int | None = None  # override the preset's least number of T steps
    coevolve_steps: int | None = None
    depth_limit: int = 2  # generated images of this depth are not used as parents again
    augment_ratio: float = 0.0  # section 4.3.2: share of x_g that goes straight to labelled
    score_batch: int = 512
    # Selection settings of the D1 strategies; None takes the strategy's default
    # (strategies.SELECTION_DEFAULTS): dgaal-paper is the literal N lowest D1 scores.
    shortlist: float | None = None  # k: spread the N picks over the k*N lowest (k-center, z)
    task_weight: float | None = None  # weight of T's entropy rank fused with D1's rank
    generated_cap: float | None = None  # most share of generated images among a round's picks
    retrain_gan: bool | None = None  # re-run Algorithm 1 every round (None: the strategy's)
    pmse_weight: float | None = None  # lambda of Eq. 8 (None: the preset's 0.1)
    noise_spread: float = 0.05  # x_g's noise-head scales are drawn in [1 - s, 1 + s]
    noise_skips: bool = False  # the noise head also scales the U-Net's skips (ModelConfig)
    take_all: bool = False  # a budget above the candidates left takes them all (else refused)

    def __post_init__(self) -> None:
        strategy_spec(self.strategy)  # ValueError on an unknown name
        if self.oracle not in ("auto", "simulated", "human"):
            raise ConfigError(f"oracle must be auto, simulated or human, got {self.oracle!r}")
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise ConfigError(f"budget must be > 0 (a fraction < 1 or a count), got {self.budget}")
        if self.budget >= 1 and self.budget != int(self.budget):
            raise ConfigError(
                f"budget must be a fraction below 1 or a whole count, got {self.budget}"
            )
        if not 0 <= self.augment_ratio <= 1:
            raise ConfigError(f"augment_ratio must lie in [0, 1], got {self.augment_ratio}")
        if self.depth_limit < 1:
            raise ConfigError(f"depth_limit must be >= 1, got {self.depth_limit}")
        checks = (
            ("shortlist", lambda v: v >= 1, "a number >= 1"),
            ("task_weight", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            ("generated_cap", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        )
        for name, ok, expected in checks:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"{name} must be {expected}, got {value}")
        if not (math.isfinite(self.noise_spread) and 0 <= self.noise_spread < 1):
            raise ConfigError(f"noise_spread must lie in [0, 1), got {self.noise_spread}")

    def selection(self) -> dict[str, float]:
        """Shortlist factor, task weight and generated cap: explicit values over the strategy's
        defaults."""
        out = strategy_spec(self.strategy).selection_defaults
        for name in out:
            if getattr(self, name) is not None:
                out[name] = float(getattr(self, name))
        return out

    def retrains_gan(self) -> bool:
        """Whether Algorithm 1 runs every round (else once, in the first round)."""
        spec = strategy_spec(self.strategy)
        return spec.retrain_gan if self.retrain_gan is None else bool(self.retrain_gan)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        """Inverse of :meth:`to_dict` (a record of an older version lacks the newer fields,
        which then take their defaults)."""
        return cls(**data)

    def run_config(self, image_shape: tuple[int, int, int], num_classes: int) -> RunConfig:
        """The model/training configuration for this round: the preset plus the overrides."""
        overrides: dict[str, Any] = {"seed": self.seed, "device": self.device}
        names = (
            "gan_steps", "gan_epochs", "task_epochs", "task_min_steps", "coevolve_steps",
            "pmse_weight",
        )  # fmt: skip
        for name in names:
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        run = preset(self.preset, image_shape, num_classes, **overrides)
        if self.noise_skips:
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, noise_skips=True))
        return run

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
