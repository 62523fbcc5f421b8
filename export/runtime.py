"""Scoring and generation with onnxruntime: serving ``sampler.onnx`` and ``generator.onnx``.

Imports numpy, onnxruntime and the torch-free pool reader only, so another service can embed it
without PyTorch (a test enforces this).

>>> sampler = SamplerSession("round-0003/sampler.onnx")   # CUDA when present, else CPU
>>> result = sampler.score_pool("pools.h5")                # all candidates, streamed from HDF5
>>> chosen = select_lowest(result.ids, result.scores, 500)
>>> scores, latents = sampler.score(images)                # uint8 [n, H, W, C] in memory
>>> gen = GeneratorSession("round-0003/generator.onnx")
>>> x_g = gen.generate(images, gen.draw_noise_scales(seed))

``select_lowest`` is :func:`dgaal_core.loop.selection.select_lowest` (the round's own rule: lowest
score first, ties by smaller id, NaN last). ``SamplerSession`` opens any exported sampler: an
int8 ``sampler.int8.onnx`` exported in "cascade" mode rescores the lowest ``rescore_fraction`` of
its scores with the fp32 ``sampler.onnx`` beside it (see :mod:`export.cascade` for why), so
callers never need to know which file they were given. ``Sampler`` and ``Generator`` are the
same classes under their earlier names.

Pool scoring reads contiguous chunks of candidate ids on a background thread
(:meth:`dgaal_core.pool.PoolReader.iter_batches`), so disk and compute overlap, and keeps only
``prefetch + 1`` batches of images alive: memory stays flat in the pool size (plus 12 bytes per
candidate for the ids and scores returned).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.loop.selection import select_lowest
from dgaal_core.model.noise import noise_scales
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import STATE_NAMES, State

from . import names
from .errors import ModelFileError
from .sessions import ModelInfo, ModelSession

Progress = Callable[[int, int], None]  # (images done, images total)

__all__ = [
    "Generator",
    "GeneratorSession",
    "ModelInfo",
    "PoolScores",
    "Sampler",
    "SamplerSession",
    "parse_state",
    "select_lowest",
]

DEFAULT_RESCORE_FRACTION = 0.15


def parse_state(state: State | str | None) -> State | None:
    """``"unlabelled"`` or ``State.UNLABELLED`` -> State; ``None`` or ``"all"`` -> None (all)."""
    if state is None or isinstance(state, State):
        return state
    if state == "all":
        return None
    by_name = {v: k for k, v in STATE_NAMES.items()}
    if state not in by_name:
        raise DgaalError(f"--state: expected all or one of {', '.join(by_name)}, got {state!r}")
    return by_name[state]


@dataclass(frozen=True)
class PoolScores:
    """Scores of pool rows: ``ids`` ascending (int64), ``scores`` float32 aligned with them."""

    ids: np.ndarray
    scores: np.ndarray
    latents: np.ndarray | None
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Throughput of the whole pass (reading included)."""
        return self.ids.size / self.seconds if self.seconds > 0 else float("nan")


def merge_rescored(
    ids: np.ndarray, fast: np.ndarray, exact_ids: np.ndarray, exact: np.ndarray
) -> np.ndarray:
    """``fast`` rows (aligned with ascending ``ids``) with the rows of ``exact_ids`` replaced by
    ``exact``; works for score vectors and latent matrices alike."""
    merged = fast.copy()
    merged[np.searchsorted(ids, exact_ids)] = exact
    return merged


class SamplerSession(ModelSession):
    """``sampler.onnx``: uint8 images -> (score = D1(G1(x)), latent z). Lower score = select.

    Opens any exported sampler file. An int8 sampler exported in "cascade" mode is paired with
    the fp32 ``sampler.onnx`` in the same folder, which rescores the lowest ``rescore_fraction``
    of every scoring pass (``exact`` is that fp32 sampler, None otherwise). ``rescore=False``
    gives an int8 file's raw scores; ``rescore=True`` insists on rescoring (an error without the
    fp32 file). Rescored rows carry fp32 scores and latents, the others int8's.
    """

    kind = names.KIND_SAMPLER
    inputs = names.SAMPLER_INPUTS
    outputs = names.SAMPLER_OUTPUTS

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        *,
        rescore: bool | None = None,
        rescore_fraction: float | None = None,
        **session: Any,
    ) -> None:
        super().__init__(path, provider, threads, **session)
        meta = self.info.metadata
        self.exact: SamplerSession | None = None
        self.rescore_fraction = float(
            rescore_fraction
            if rescore_fraction is not None
            else meta.get(names.META_RESCORE_FRACTION, DEFAULT_RESCORE_FRACTION)
        )
        if not 0 < self.rescore_fraction <= 1:
            raise DgaalError(f"rescore_fraction: expected (0, 1], got {self.rescore_fraction}")
        if rescore is None:
            rescore = meta.get(names.META_INT8_MODE) == "cascade"
        if not rescore:
            return
        exact_path = self.path.with_name(names.SAMPLER_FILE)
        if exact_path == self.path or self.info.precision == "fp32":
            raise ModelFileError(f"{self.path}: an fp32 sampler has nothing to rescore")
        if not exact_path.is_file():
            raise ModelFileError(
                f"{self.path}: an int8 sampler that needs fp32 rescoring, "
                f"but {exact_path} is missing"
            )
        exact = SamplerSession(exact_path, provider, threads, rescore=False, **session)
        if exact.info.image_shape != self.info.image_shape:
            raise ModelFileError(f"{self.path} and {exact_path} take different image shapes")
        if exact.info.config_hash != self.info.config_hash or exact.info.round != self.info.round:
            raise ModelFileError(f"{self.path} and {exact_path} come from different exports")
        self.exact = exact

    def _rescored_count(self, n: int) -> int:
        return max(1, math.ceil(self.rescore_fraction * n)) if n else 0

    def score(
        self, images: np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``images`` uint8 [n, H, W, C] -> (scores float32 [n], latents float32 [n, z_dim])."""
        self.info.check_images(images)
        bs = batch_size or self.default_batch_size
        scores = np.empty(images.shape[0], np.float32)
        latents = np.empty((images.shape[0], self.info.z_dim), np.float32)
        for i in range(0, images.shape[0], bs):
            s, z = self.run({names.IMAGES: images[i : i + bs]})
            scores[i : i + bs], latents[i : i + bs] = s, z
        if self.exact is None:
            return scores, latents
        rows = np.arange(scores.size)
        low = np.sort(select_lowest(rows, scores, self._rescored_count(scores.size)))
        exact_s, exact_z = self.exact.score(images[low], batch_size)
        return (
            merge_rescored(rows, scores, low, exact_s),
            merge_rescored(rows, latents, low, exact_z),
        )

    def check_pool(self, reader: PoolReader) -> None:
        """Raise :class:`~export.errors.ModelMismatchError` unless the pool's images fit."""
        self.info.check_pool_shape(self.path, reader.path, reader.image_shape)

    def score_pool(
        self,
        pool: str | Path | PoolReader,
        ids: np.ndarray | Sequence[int] | None = None,
        *,
        state: State | str | None = State.UNLABELLED,
        batch_size: int | None = None,
        prefetch: int = 2,
        return_latents: bool = False,
        progress: Progress | None = None,
    ) -> PoolScores:
        """Score pool rows ``ids`` (default: every row in ``state``; ``state=None``: all rows).

        Streams contiguous chunks of ids from HDF5 with ``prefetch`` batches read ahead on a
        background thread. Returns ids in ascending order with their scores.
        """
        start = time.perf_counter()
        reader = pool if isinstance(pool, PoolReader) else PoolReader(pool)
        try:
            first = self._score_rows(
                reader, self._pick(reader, ids, state), batch_size, prefetch, return_latents,
                progress,
            )  # fmt: skip
            if self.exact is None:
                return first
            k = self._rescored_count(first.ids.size)
            low = np.sort(select_lowest(first.ids, first.scores, k))
            second = self.exact._score_rows(reader, low, batch_size, prefetch, return_latents)
        finally:
            if reader is not pool:
                reader.close()
        return PoolScores(
            first.ids,
            merge_rescored(first.ids, first.scores, low, second.scores),
            None
            if first.latents is None or second.latents is None
            else merge_rescored(first.ids, first.latents, low, second.latents),
            time.perf_counter() - start,
        )

    def _pick(
        self, reader: PoolReader, ids: np.ndarray | Sequence[int] | None, state: State | str | None
    ) -> np.ndarray:
        """The ascending, checked ids to score."""
        self.check_pool(reader)
        if ids is None:
            return reader.ids(parse_state(state))
        chosen = np.unique(np.asarray(ids, dtype=np.int64))
        if chosen.size and (chosen[0] < 0 or chosen[-1] >= reader.num_rows):
            raise DgaalError(
                f"{reader.path}: ids must lie in [0, {reader.num_rows}), got "
                f"{chosen[0]}..{chosen[-1]}"
            )
        return chosen

    def _score_rows(
        self,
        reader: PoolReader,
        chosen: np.ndarray,
        batch_size: int | None,
        prefetch: int,
        return_latents: bool,
        progress: Progress | None = None,
    ) -> PoolScores:
        """This graph's scores of ascending pool rows ``chosen`` (no rescoring)."""
        n, bs = chosen.size, batch_size or self.default_batch_size
        scores = np.empty(n, np.float32)
        latents = np.empty((n, self.info.z_dim), np.float32) if return_latents else None
        start, done = time.perf_counter(), 0
        if progress is not None:
            progress(0, n)
        for batch_ids, images in reader.iter_batches(chosen, bs, prefetch=prefetch):
            s, z = self.run({names.IMAGES: images})
            k = batch_ids.size
            scores[done : done + k] = s
            if latents is not None:
                latents[done : done + k] = z
            done += k
            if progress is not None:
                progress(done, n)
        assert done == n, (done, n)
        return PoolScores(chosen, scores, latents, time.perf_counter() - start)


class GeneratorSession(ModelSession):
    """``generator.onnx``: uint8 images + noise-head scales -> uint8 images G(x), same shape."""

    kind = names.KIND_GENERATOR
    inputs = names.GENERATOR_INPUTS
    outputs = names.GENERATOR_OUTPUTS

    def __init__(
        self, path: str | Path, provider: str = "auto", threads: int | None = None, **session: Any
    ) -> None:
        """See :class:`~export.sessions.ModelSession` for ``session`` (device_id, options...)."""
        super().__init__(path, provider, threads, **session)
        dims = self.session.get_inputs()[1].shape
        if len(dims) != 1 or not isinstance(dims[0], int):
            raise ModelFileError(f"{self.path}: noise_scales must have one static dimension")
        self.noise_channels = int(dims[0])
        if self.info.noise_channels not in (0, self.noise_channels):
            raise ModelFileError(
                f"{self.path}: metadata says {self.info.noise_channels} noise channels, "
                f"graph takes {self.noise_channels}"
            )

    def draw_noise_scales(self, seed: int | np.random.Generator) -> np.ndarray:
        """Fresh noise-head scales, float32 [noise_channels], uniform in the exported range."""
        return noise_scales(seed, self.noise_channels, *self.info.noise_range)

    def generate(
        self, images: np.ndarray, noise_scales: np.ndarray, batch_size: int | None = None
    ) -> np.ndarray:
        """``images`` uint8 [n, H, W, C] -> G(images) uint8 [n, H, W, C], ready to append."""
        self.info.check_images(images)
        noise = np.asarray(noise_scales, dtype=np.float32)
        if noise.shape != (self.noise_channels,):
            raise DgaalError(
                f"noise_scales: expected float32 [{self.noise_channels}], got {list(noise.shape)}"
            )
        bs = batch_size or self.default_batch_size
        out = np.empty_like(images)
        for i in range(0, images.shape[0], bs):
            feeds = {names.IMAGES: images[i : i + bs], names.NOISE_SCALES: noise}
            out[i : i + bs] = self.run(feeds)[0]
        return out

    def generate_pool(
        self,
        pool: str | Path | PoolReader,
        ids: np.ndarray | Sequence[int],
        noise_scales: np.ndarray,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """G(x) for pool rows ``ids``, in the order given (uint8 [len(ids), H, W, C])."""
        reader = pool if isinstance(pool, PoolReader) else PoolReader(pool)
        try:
            self.info.check_pool_shape(self.path, reader.path, reader.image_shape)
            ids = np.asarray(ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= reader.num_rows):
                raise DgaalError(
                    f"{reader.path}: ids must lie in [0, {reader.num_rows}), got "
                    f"{ids.min()}..{ids.max()}"
                )
            return self.generate(reader.read_images(ids), noise_scales, batch_size)
        finally:
            if reader is not pool:
                reader.close()


# The names of earlier versions, kept for services that embed them (the README's first examples
# used them): the classes are onnxruntime sessions, hence the new names.
Sampler = SamplerSession
Generator = GeneratorSession
