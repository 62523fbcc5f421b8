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
more and the rescoring fraction must grow with it (``score_pool(..., rescore_fraction=...)``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dgaal_core.pool import PoolReader
from dgaal_core.schema import State

from . import names
from .errors import ModelFileError
from .runtime import PoolScores, Progress, Sampler, select_lowest

DEFAULT_RESCORE_FRACTION = 0.15


def merge_rescored(
    ids: np.ndarray, fast: np.ndarray, exact_ids: np.ndarray, exact: np.ndarray
) -> np.ndarray:
    """``fast`` scores (aligned with ascending ``ids``) with ``exact_ids`` replaced by ``exact``."""
    merged = fast.copy()
    merged[np.searchsorted(ids, exact_ids)] = exact
    return merged


def cascade_scores(fast: np.ndarray, exact: np.ndarray, rescore_fraction: float) -> np.ndarray:
    """What the cascade returns for in-memory score vectors (``exact`` known for every row)."""
    ids = np.arange(fast.shape[0])
    k = max(1, math.ceil(rescore_fraction * ids.size))
    low = np.sort(select_lowest(ids, fast, k))
    return merge_rescored(ids, fast, low, exact[low])


class CascadeSampler:
    """Scores with ``fast`` (int8), rescores the lowest ``rescore_fraction`` with ``exact``."""

    def __init__(
        self, fast: Sampler, exact: Sampler, rescore_fraction: float = DEFAULT_RESCORE_FRACTION
    ) -> None:
        if fast.info.image_shape != exact.info.image_shape:
            raise ModelFileError(f"{fast.path} and {exact.path} take different image shapes")
        if fast.info.config_hash != exact.info.config_hash or fast.info.round != exact.info.round:
            raise ModelFileError(f"{fast.path} and {exact.path} come from different exports")
        self.fast, self.exact, self.rescore_fraction = fast, exact, rescore_fraction
        self.info, self.path, self.provider = fast.info, fast.path, fast.provider

    def score(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Cascaded scores of in-memory ``images`` (no latents)."""
        fast, _ = self.fast.score(images, batch_size)
        k = max(1, math.ceil(self.rescore_fraction * fast.size))
        low = np.sort(select_lowest(np.arange(fast.size), fast, k))
        exact, _ = self.exact.score(images[low], batch_size)
        return merge_rescored(np.arange(fast.size), fast, low, exact)

    def score_pool(
        self,
        pool: str | Path | PoolReader,
        ids: np.ndarray | Sequence[int] | None = None,
        *,
        state: State | str | None = State.UNLABELLED,
        batch_size: int | None = None,
        prefetch: int = 2,
        progress: Progress | None = None,
        rescore_fraction: float | None = None,
    ) -> PoolScores:
        """Like :meth:`Sampler.score_pool`; scores are fp32 for the rescored lowest fraction."""
        start = time.perf_counter()
        reader = pool if isinstance(pool, PoolReader) else PoolReader(pool)
        try:
            first = self.fast.score_pool(
                reader, ids, state=state, batch_size=batch_size, prefetch=prefetch,
                progress=progress,
            )  # fmt: skip
            fraction = self.rescore_fraction if rescore_fraction is None else rescore_fraction
            k = max(1, math.ceil(fraction * first.ids.size)) if first.ids.size else 0
            low = select_lowest(first.ids, first.scores, k)
            second = self.exact.score_pool(reader, low, batch_size=batch_size, prefetch=prefetch)
        finally:
            if reader is not pool:
                reader.close()
        merged = merge_rescored(first.ids, first.scores, second.ids, second.scores)
        return PoolScores(first.ids, merged, None, time.perf_counter() - start)


def open_sampler(
    path: str | Path, provider: str = "auto", threads: int | None = None
) -> Sampler | CascadeSampler:
    """A sampler for ``path``; an int8 sampler accepted in cascade mode comes with the fp32
    ``sampler.onnx`` beside it for rescoring (:class:`ModelFileError` if that is missing)."""
    fast = Sampler(path, provider, threads)
    meta = fast.info.metadata
    if meta.get(names.META_INT8_MODE) != "cascade":
        return fast
    exact_path = Path(path).with_name(names.SAMPLER_FILE)
    if not exact_path.is_file():
        raise ModelFileError(
            f"{path}: an int8 sampler that needs fp32 rescoring, but {exact_path} is missing"
        )
    fraction = float(meta.get(names.META_RESCORE_FRACTION, DEFAULT_RESCORE_FRACTION))
    return CascadeSampler(fast, Sampler(exact_path, provider, threads), fraction)
