"""G1's adversarial role on frozen embeddings: the projection D1 reads when a pool has them.

With ``ModelConfig.embedding_dim > 0`` D1 no longer reads G1's latent z = G1(x); it reads
z = P(e), where e is the pool's frozen embedding of x (any ONNX encoder, ``dgaal pool embed``) and
P is this small MLP. P plays G1's part of Eq. 4 (it is updated to make D1 call both pools
labelled, with G1's optimiser settings), so D1 and its adversary learn on the encoder's features
instead of on a U-Net encoder trained from scratch. G (G1 + G2) still makes x_g by Eq. 8.

The per-feature standardisation (``mean``, ``std`` buffers) is fitted once, on the pool's
embeddings when the models are new, and travels with the weights (checkpoint and ONNX), so the
exported sampler needs nothing but raw pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dgaal_core.model.config import ModelConfig


class EmbeddingProjection(nn.Module):
    """P: embeddings (B, D) (or (B, D, 1, 1)) -> z (B, z_dim): standardise, Linear, ReLU, Linear."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, embedding_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(embedding_dim))
        self.register_buffer("std", torch.ones(embedding_dim))
        self.net = nn.Sequential(
            nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim)
        )  # fmt: skip

    @classmethod
    def for_config(cls, config: ModelConfig) -> EmbeddingProjection:
        """P for ``config``: its embedding size in, G1's latent size out, D1's hidden width."""
        return cls(config.embedding_dim, config.latent_dim, config.d1_hidden)

    def fit_scale(self, embeddings: np.ndarray, chunk: int = 65_536) -> None:
        """Set the standardisation from ``embeddings`` [N, D] (a floor keeps dead features at 1).
        Summed in float64 ``chunk`` rows at a time, so a large pool is never copied whole."""
        n, total, squares = 0, 0.0, 0.0
        for i in range(0, embeddings.shape[0], chunk):
            x = np.asarray(embeddings[i : i + chunk], dtype=np.float64)
            n, total, squares = n + x.shape[0], total + x.sum(0), squares + (x * x).sum(0)
        if n == 0:
            raise ValueError("fit_scale: no embeddings to standardise on")
        mean = np.asarray(total) / n
        std = np.sqrt(np.maximum(np.asarray(squares) / n - mean * mean, 0.0))
        self.mean.copy_(torch.from_numpy(mean).float())
        self.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float())

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, D, 1, 1) embeddings -> (B, z_dim)."""
        e = e.flatten(1).float()
        return self.net((e - self.mean) / self.std)
