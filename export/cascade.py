"""int8 speed with the fp32 selection: score everything with the int8 sampler, rescore the lowest
``rescore_fraction`` of the candidates with the fp32 sampler. Torch-free.

Why: int8 moves each score a little; where scores crowd around the selection boundary that swaps a
few percent of the selected ids (measured 96-97% agreement on briefly trained models, below the
99% bar). Those swaps happen between neighbours, so the true lowest N lie, with a wide margin,
inside int8's lowest 3N; rescoring those in fp32 and selecting from the merged scores gives fp32's
selection at the cost of one int8 pass plus an fp32 pass over ``rescore_fraction`` of the pool.
The export measures this (``export.quantize``) and accepts int8 in "cascade" mode only if the
cascaded selection agrees with fp32 on >= 99% of ids.

Selections of up to ``rescore_fraction / 3`` of the candidates are covered by that check; select
more and the rescoring fraction must grow with it (``Sampler(..., rescore_fraction=...)``).
:class:`export.runtime.Sampler` runs the cascade; this module keeps the in-memory form that the
export's agreement check measures.
"""

from __future__ import annotations

import math

import numpy as np

from .runtime import DEFAULT_RESCORE_FRACTION, merge_rescored, select_lowest

__all__ = ["DEFAULT_RESCORE_FRACTION", "cascade_scores"]


def cascade_scores(fast: np.ndarray, exact: np.ndarray, rescore_fraction: float) -> np.ndarray:
    """What the cascade returns for in-memory score vectors (``exact`` known for every row)."""
    ids = np.arange(fast.shape[0])
    k = max(1, math.ceil(rescore_fraction * ids.size))
    low = np.sort(select_lowest(ids, fast, k))
    return merge_rescored(ids, fast, low, exact[low])
