"""The round's model server: export G1+D1 and G to ONNX, then score and generate with
onnxruntime. This is the :class:`dgaal_core.round_parts.ServedModels` the CLI hands the round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.model.config import RunConfig
from dgaal_core.pool.reader import PoolReader

from .pipeline import ExportedModels, export_round, sample_pool_images
from .runtime import Generator, Sampler

Progress = Callable[[int, int], None]
PARITY_IMAGES = 256


class OnnxServed:
    """Scores pool rows with ``sampler.onnx`` and makes x_g with ``generator.onnx``."""

    def __init__(
        self, sampler: Sampler, generator: Generator, batch_size: int, progress: Progress | None
    ):
        self.sampler = sampler
        self.generator = generator
        self.batch_size = batch_size
        self.progress = progress

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1 scores for ``ids``, in the order given."""
        res = self.sampler.score_pool(
            pool_path, ids, batch_size=self.batch_size, progress=self.progress
        )
        # res.ids is ascending and unique; map back onto the caller's order
        return res.scores[np.searchsorted(res.ids, np.asarray(ids, dtype=np.int64))]

    def generate(self, images: np.ndarray, seed: int, spread: float = 0.05) -> np.ndarray:
        """G(x) with noise-head scales drawn uniformly in ``[1 - spread, 1 + spread]`` from
        ``seed`` (0.05 is the paper's [0.95, 1.05])."""
        noise = round_noise(seed, spread, self.generator.noise_channels)
        return self.generator.generate(images, noise, self.batch_size)


def round_noise(seed: int, spread: float, channels: int) -> np.ndarray:
    """The round's noise-head scales: uniform in ``[1 - spread, 1 + spread]``, from ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.uniform(1.0 - spread, 1.0 + spread, channels).astype(np.float32)


class RayServed:
    """The same as :class:`OnnxServed`, with scoring and generation run on Ray Data
    (:mod:`export.distributed`); selections are identical to the local engine's."""

    def __init__(
        self, sampler: Sampler, generator: Generator, options: Any, progress: Progress | None
    ):
        self.sampler, self.generator = sampler, generator
        self.options, self.progress = options, progress

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1 scores for ``ids``, in the order given."""
        from .distributed import score_pool_ray

        res = score_pool_ray(
            self.sampler.path, pool_path, ids, options=self.options, progress=self.progress
        )
        return res.scores[np.searchsorted(res.ids, np.asarray(ids, dtype=np.int64))]

    def generate(self, images: np.ndarray, seed: int, spread: float = 0.05) -> np.ndarray:
        """G(x) like :meth:`OnnxServed.generate`, on the Ray cluster."""
        from .distributed import generate_images_ray

        noise = round_noise(seed, spread, self.generator.noise_channels)
        return generate_images_ray(self.generator.path, images, noise, self.options)


def onnx_exporter(
    provider: str = "auto",
    batch_size: int = 512,
    progress: Progress | None = None,
    ray: Any = None,
) -> Callable[[Any, RunConfig, Path, int, Path], OnnxServed | RayServed]:
    """An exporter for :class:`dgaal_core.round.Round`: writes ``sampler.onnx`` and
    ``generator.onnx`` (parity-checked against PyTorch on pool images) into the round folder and
    opens one onnxruntime session for each; with ``ray`` (:class:`export.distributed.RayOptions`)
    the round scores and generates on a Ray cluster instead."""

    def export(
        models: Any, run: RunConfig, out_dir: Path, round_no: int, pool: Path
    ) -> OnnxServed | RayServed:
        with PoolReader(pool) as reader:
            parity = sample_pool_images(reader, PARITY_IMAGES, seed=run.train.seed)
        g, d1 = models.g, models.d1
        was = g.training, d1.training
        g.cpu().eval()
        d1.cpu().eval()
        try:
            report = export_round(
                ExportedModels(g, d1, run.model, round_no, f"round {round_no}"),
                out_dir,
                parity,
                seed=run.train.seed,
            )
        finally:
            g.train(was[0])
            d1.train(was[1])
        sampler = Sampler(report.sampler, provider=provider)
        generator = Generator(report.generator, provider=provider)
        if ray is not None:
            return RayServed(sampler, generator, ray, progress)
        return OnnxServed(sampler, generator, batch_size, progress)

    return export
