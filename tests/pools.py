"""Tiny data shared by the tests that run rounds (pytest puts this folder on sys.path)."""

from __future__ import annotations

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
