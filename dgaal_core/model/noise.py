"""The noise head's scales: the one sampler of them (numpy only, so the torch-free runtime uses it).

G2 starts with a per-channel 1x1 scale whose weights lie in ``[1 - spread, 1 + spread]``
(the paper's [0.95, 1.05]: ``spread = 0.05``) and never train. Each generation call draws fresh
scales from a seed; the exported generator stores its range in its metadata
(``dgaal.noise_range``), so whoever generates with the file draws what the round asked for.
"""

from __future__ import annotations

import numpy as np

PAPER_SPREAD = 0.05  # section 3.1.2: weights in [0.95, 1.05]


def noise_range(spread: float = PAPER_SPREAD) -> tuple[float, float]:
    """``(1 - spread, 1 + spread)``."""
    return 1.0 - spread, 1.0 + spread


def noise_scales(
    seed: int | np.random.Generator, channels: int, low: float, high: float
) -> np.ndarray:
    """``channels`` scales drawn uniformly in ``[low, high)`` from ``seed``, float32."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.uniform(low, high, channels).astype(np.float32)
