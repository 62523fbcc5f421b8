"""Images as the models see them, and the small data interface training reads through.

Images enter as uint8 NHWC arrays, as the HDF5 pool stores them. :func:`to_model_input` is the one
place they become float NCHW in [-1, 1]; :func:`to_uint8_images` is its inverse for G's output.
Both are plain torch ops, so the ONNX export can embed exactly the same transform.

Training reads through :class:`DataSource` (``len`` and ``get(indices)``): in-memory arrays now
(:class:`ArraySource`), a streamed pool later. Randomness is always a ``numpy.random.Generator``
passed in; indices of a batch are sorted (order inside a batch changes no loss, and sorted reads
are what HDF5 wants).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

Batch = tuple[np.ndarray, np.ndarray | None]  # uint8 (B, H, W, C), int64 (B,) or None


def to_model_input(
    images: np.ndarray | torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW in [-1, 1] (on ``device``; the copy moves uint8 bytes)."""
    x = torch.as_tensor(images)  # (B, H, W, C) uint8
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC (rounded, clamped); inverse of :func:`to_model_input`."""
    y = torch.round((x.float() + 1.0) * 127.5).clamp(0, 255)  # (B, C, H, W)
    return y.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


class DataSource(Protocol):
    """Rows of images (uint8 NHWC) with optional labels, read by absolute row indices."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> Batch:
        """Images (and labels, or None) at sorted ``indices``."""
        ...


@dataclass(frozen=True)
class ArraySource:
    """An in-memory :class:`DataSource` over uint8 NHWC ``images`` and optional int ``labels``."""

    images: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ArraySource.images: expected uint8 (N, H, W, C), got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(
                f"ArraySource.labels: expected shape ({len(self.images)},), got {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: np.ndarray) -> Batch:
        """Images (and labels, or None) at ``indices``."""
        labels = None if self.labels is None else self.labels[indices].astype(np.int64)
        return self.images[indices], labels


@dataclass(frozen=True)
class EmbeddedSource:
    """A :class:`DataSource` whose rows also have frozen embeddings (``embeddings[i]`` belongs to
    row ``i``): what D1 reads when it reads embeddings (:mod:`dgaal_core.model.projection`)."""

    source: DataSource
    embeddings: np.ndarray  # [len(source), D]

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.source):
            raise ValueError(
                f"EmbeddedSource: expected embeddings [{len(self.source)}, D], got "
                f"{list(self.embeddings.shape)}"
            )

    def __len__(self) -> int:
        return len(self.source)

    def get(self, indices: np.ndarray) -> Batch:
        """Images (and labels, or None) at ``indices``."""
        return self.source.get(indices)


def sample_rows(source: DataSource, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` sorted row positions of ``source``, drawn uniformly with replacement."""
    n = len(source)
    if n == 0:
        raise ValueError("sample_batch: the source is empty")
    return np.sort(rng.integers(0, n, size=batch_size))


def sample_batch(source: DataSource, batch_size: int, rng: np.random.Generator) -> Batch:
    """``batch_size`` rows drawn uniformly with replacement (pools may be smaller than a batch)."""
    return source.get(sample_rows(source, batch_size, rng))


def sample_union(
    sources: tuple[DataSource, ...], batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Images drawn uniformly from the union of ``sources`` (each row equally likely)."""
    sizes = np.array([len(s) for s in sources], dtype=np.int64)
    if sizes.sum() == 0:
        raise ValueError("sample_union: all sources are empty")
    rows = np.sort(rng.integers(0, int(sizes.sum()), size=batch_size))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for i, source in enumerate(sources):
        mine = rows[(rows >= bounds[i]) & (rows < bounds[i + 1])] - bounds[i]
        if len(mine):
            parts.append(source.get(mine)[0])
    return np.concatenate(parts)


def epoch_batches(
    source: DataSource,
    batch_size: int,
    rng: np.random.Generator | None,
    *,
    drop_single: bool = True,
) -> Iterator[Batch]:
    """One pass over ``source`` in batches, shuffled by ``rng`` (in row order when None).

    With ``drop_single`` a last batch of one row is dropped (batch norm cannot train on it).
    """
    n = len(source)
    order = np.arange(n) if rng is None else rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = np.sort(order[start : start + batch_size])
        if drop_single and len(idx) < 2 and n > 1:
            break
        yield source.get(idx)


def augment(
    images: np.ndarray, rng: np.random.Generator, *, hflip: bool | None = None
) -> np.ndarray:
    """Random crop after zero padding (pad = max(1, H // 8)) and, for RGB, random horizontal flip.

    ``hflip=None`` flips only 3-channel images: 1-channel data here is digit-like, where a mirror
    image is another symbol.
    """
    b, h, w, c = images.shape  # (B, H, W, C) uint8
    pad = max(1, h // 8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, size=b)
    ox = rng.integers(0, 2 * pad + 1, size=b)
    rows = oy[:, None] + np.arange(h)  # (B, H)
    cols = ox[:, None] + np.arange(w)  # (B, W)
    if hflip is None:
        hflip = c == 3
    if hflip:
        flip = rng.integers(0, 2, size=b).astype(bool)  # (B,)
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
