"""Tiny data shared by the tests that run rounds (pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def class_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like 8x8x1 images of 4 classes (class c lights rows 2c..2c+1), and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    base = np.zeros((4, 8, 8, 1), np.uint8)
    for c in range(4):
        base[c, c * 2 : c * 2 + 2] = 220
    images = np.clip(base[labels] + rng.integers(0, 30, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
    return images, labels


def random_pool(path: Path, shape=(8, 8, 1), n: int = 700, seed: int = 0) -> np.ndarray:
    """A pool of ``n`` random images (10 classes, 20% labelled); returns the images."""
    from dgaal_core.loop.selection import choose_initial
    from dgaal_core.pool.writer import PoolBuilder

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    with PoolBuilder(path, shape, [str(i) for i in range(10)]) as b:
        for i in range(0, n, 128):
            b.add(images[i : i + 128], truth=np.arange(i, min(n, i + 128)) % 10)
        b.finish(labelled=choose_initial(b.truth, 0.2, rng))
    return images


def export_untrained(out: Path, images: np.ndarray, seed: int = 0) -> tuple[Path, Path]:
    """``sampler.onnx`` and ``generator.onnx`` of freshly initialised ``small`` models."""
    from dgaal_core.model.config import preset
    from dgaal_core.model.networks import build_models
    from export.pipeline import ExportedModels, export_round

    shape = tuple(int(v) for v in images.shape[1:])
    config = preset("small", shape, 10).model
    m = build_models(config, seed)
    report = export_round(ExportedModels(m.g, m.d1, config, 1, "test"), out, images[:64])
    return report.sampler, report.generator
