"""The seams between the round and the exported models (imports go one way: the CLI hands the
round ``export.round_backend.onnx_exporter``, which serves them with onnxruntime).

An :class:`Exporter` turns the trained networks of a round into :class:`ServedModels`: the
sampler (G1 + D1, scores and latents) and the generator (G). The round never calls PyTorch to
score, select or generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dgaal_core.model.config import RunConfig
from dgaal_core.model.noise import PAPER_SPREAD
from dgaal_core.progress import Progress

if TYPE_CHECKING:
    from dgaal_core.model.networks import Models


class ServedModels(Protocol):
    """The exported sampler and generator, as the round uses them."""

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1(G1(x)) for the pool rows ``ids``, in that order."""
        ...

    def latents(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """The sampler's latent output z = G1(x), [len(ids), z_dim], for ``ids`` in order."""
        ...

    def generate(self, images: np.ndarray, seed: int) -> np.ndarray:
        """x_g = G(x) as uint8 images, with noise-head scales drawn from ``seed`` in the range
        the generator was exported with."""
        ...


@dataclass(frozen=True)
class ExportRequest:
    """What a round asks its exporter to serve."""

    models: Models  # G (G1 + G2) and D1 of the trainer
    run: RunConfig
    out_dir: Path  # the round's folder
    round: int
    pool: Path  # parity images are drawn from it
    noise_spread: float = PAPER_SPREAD  # the generator's noise-head range: [1 -+ this]


class Embedder(Protocol):
    """Embed the rows that joined a pool since its embeddings were made (nothing when it has
    none); returns the rows embedded. The caller holds the pool's writer lock."""

    def __call__(self, pool_path: Path, progress: Progress | None) -> int: ...


class Exporter(Protocol):
    """Export a round's networks and serve them."""

    def __call__(self, request: ExportRequest) -> ServedModels: ...
