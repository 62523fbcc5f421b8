"""The round's model server: export G1+D1 and G to ONNX, then score and generate with
onnxruntime. :func:`onnx_exporter` is the :class:`dgaal_core.loop.serving.Exporter` the command
line hands the round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import PoolFormatError
from dgaal_core.loop.serving import ExportRequest
from dgaal_core.pool.embeddings import Embeddings, open_embeddings
from dgaal_core.pool.reader import PoolReader

from .pipeline import (
    PARITY_IMAGES,
    ExportedModels,
    export_round,
    pool_encoder,
    sample_pool_images,
)
from .runtime import GeneratorSession, SamplerSession

Progress = Callable[[int, int], None]


class OnnxServed:
    """Scores pool rows with ``sampler.onnx`` and makes x_g with ``generator.onnx``."""

    def __init__(
        self,
        sampler: SamplerSession,
        generator: GeneratorSession,
        batch_size: int,
        progress: Progress | None,
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

    def latents(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """The sampler's latent output for ``ids``, in the order given."""
        res = self.sampler.score_pool(
            pool_path, ids, batch_size=self.batch_size, return_latents=True
        )
        assert res.latents is not None
        return res.latents[np.searchsorted(res.ids, np.asarray(ids, dtype=np.int64))]

    def generate(self, images: np.ndarray, seed: int) -> np.ndarray:
        """G(x) with noise-head scales drawn from ``seed`` in the generator's exported range."""
        noise = self.generator.draw_noise_scales(seed)
        return self.generator.generate(images, noise, self.batch_size)


class RayServed(OnnxServed):
    """The same as :class:`OnnxServed`, with pool scoring and generation run on Ray Data
    (:mod:`export.distributed`); selections are identical to the local engine's. The latents of
    a shortlist (a few times the budget) are computed locally."""

    def __init__(
        self,
        sampler: SamplerSession,
        generator: GeneratorSession,
        options: Any,
        progress: Progress | None,
    ):
        super().__init__(sampler, generator, options.batch_size, progress)
        self.options = options

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1 scores for ``ids``, in the order given."""
        from .distributed import score_pool_ray

        res = score_pool_ray(
            self.sampler.path, pool_path, ids, options=self.options, progress=self.progress
        )
        return res.scores[np.searchsorted(res.ids, np.asarray(ids, dtype=np.int64))]

    def generate(self, images: np.ndarray, seed: int) -> np.ndarray:
        """G(x) like :meth:`OnnxServed.generate`, on the Ray cluster."""
        from .distributed import generate_images_ray

        noise = self.generator.draw_noise_scales(seed)
        return generate_images_ray(self.generator.path, images, noise, self.options)


class EmbeddingServed:
    """D1 on the pool's embeddings: scores and latents from ``sampler-head.onnx`` on the stored
    embeddings (the one-file ``sampler.onnx`` would run the encoder over every candidate again);
    x_g from ``inner`` (local or Ray)."""

    def __init__(self, head: Any, inner: OnnxServed) -> None:
        self.head, self.inner = head, inner
        self.sampler, self.generator = inner.sampler, inner.generator
        self._emb: Embeddings | None = None  # read once while the manifest stays the same

    chunk = 65_536  # rows scored at a time (their float32 copy: 320 MiB at 1280-d)

    def _outputs(self, pool_path: Path, ids: np.ndarray, which: int) -> np.ndarray:
        emb = open_embeddings(pool_path)
        if emb is None:
            raise PoolFormatError(f"{pool_path}: D1 reads the pool's embeddings, and it has none")
        if self._emb is not None and (self._emb.pool_path, self._emb.manifest) == (
            emb.pool_path,
            emb.manifest,
        ):
            emb = self._emb
        self._emb = emb
        ids = np.asarray(ids, dtype=np.int64)
        parts = [
            self.head.score(emb.pool(ids[i : i + self.chunk]))[which]
            for i in range(0, ids.size, self.chunk)
        ]
        if not parts:
            return self.head.score(emb.pool(ids))[which]
        return np.concatenate(parts)

    def score_pool(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """D1(P(e)) for ``ids``, in the order given."""
        return self._outputs(pool_path, ids, 0)

    def latents(self, pool_path: Path, ids: np.ndarray) -> np.ndarray:
        """P(e) for ``ids``, in the order given."""
        return self._outputs(pool_path, ids, 1)

    def generate(self, images: np.ndarray, seed: int) -> np.ndarray:
        """G(x), as ``inner`` makes it."""
        return self.inner.generate(images, seed)


def onnx_exporter(
    provider: str = "auto",
    batch_size: int = 512,
    progress: Progress | None = None,
    ray: Any = None,
) -> Callable[[ExportRequest], OnnxServed | EmbeddingServed]:
    """An exporter for :class:`dgaal_core.loop.round.Round`: writes ``sampler.onnx`` and
    ``generator.onnx`` (parity-checked against PyTorch on pool images, the generator's noise
    range as the round asked) into the round folder and opens one onnxruntime session for each;
    with ``ray`` (:class:`export.distributed.RayOptions`) the round scores and generates on a
    Ray cluster instead."""

    def export(request: ExportRequest) -> OnnxServed | EmbeddingServed:
        run = request.run
        with PoolReader(request.pool) as reader:
            parity = sample_pool_images(reader, PARITY_IMAGES, seed=run.train.seed)
        g, d1 = request.models.g, request.models.d1
        was = g.training, d1.training
        g.cpu().eval()
        d1.cpu().eval()
        try:
            proj = request.models.proj
            encoder = None if proj is None else pool_encoder(request.pool)
            models = ExportedModels(
                g, d1, run.model, request.round, f"round {request.round}", request.noise_spread,
                proj, encoder,
            )  # fmt: skip
            report = export_round(models, request.out_dir, parity, seed=run.train.seed)
        finally:
            g.train(was[0])
            d1.train(was[1])
        sampler = SamplerSession(report.sampler, provider=provider)
        generator = GeneratorSession(report.generator, provider=provider)
        served = (
            RayServed(sampler, generator, ray, progress)
            if ray is not None
            else OnnxServed(sampler, generator, batch_size, progress)
        )
        if report.sampler_head is None:
            return served
        from .embedding_sampler import HeadSession

        return EmbeddingServed(HeadSession(report.sampler_head, provider=provider), served)

    return export
