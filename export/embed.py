"""``dgaal pool embed``: an encoder over every row of a pool and its test split, committed as the
pool's embeddings (:mod:`dgaal_core.pool.embeddings`); and the catch-up a round runs so rows that
joined since (generated images) have theirs before anything reads them.

Torch-free: the encoder runs in onnxruntime (:class:`~export.encoder.EncoderSession`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dgaal_core.errors import PoolFormatError
from dgaal_core.loop.serving import Embedder
from dgaal_core.pool.embeddings import Manifest, embed_dir, read_manifest, write_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.shards import file_sha256
from dgaal_core.pool.writer import PoolWriter
from dgaal_core.progress import Progress, silent

from .encoder import EncoderSession, InputSpec

if TYPE_CHECKING:
    from .ray_cluster import RayOptions

STAGE = "Embedding"
RAY_CHUNK = 1 << 16  # pool rows per Ray pass: bounds what the driver holds


def _offset(progress: Progress, base: int, total: int, done: int, _chunk: int) -> None:
    """A Ray pass's ``(done, chunk total)`` as the whole embedding's progress."""
    progress(STAGE, base + done, total)


def _write(
    pool_path: Path,
    session: EncoderSession,
    *,
    new: bool,
    batch_size: int,
    progress: Progress,
    ray: RayOptions | None = None,
) -> tuple[Manifest, int]:
    """Embed the rows the embeddings lack (all of them when ``new``); the caller holds the
    pool's writer lock. Returns the manifest and the number of rows embedded now."""
    with PoolReader(pool_path) as r:
        rows = {"pool": r.num_rows, "test": r.num_test}
        old = None if new else read_manifest(pool_path)
        todo = sum(rows.values()) - (0 if old is None else sum(old.rows(s) for s in rows))
        done = 0

        def batches(split: str, lo: int, hi: int) -> Iterator[np.ndarray]:
            nonlocal done
            if split == "pool" and ray is not None:  # in chunks: the driver holds one at a time
                from .distributed import embed_rows_ray

                for at in range(lo, hi, RAY_CHUNK):
                    ids = np.arange(at, min(hi, at + RAY_CHUNK))
                    report = functools.partial(_offset, progress, done, todo)
                    yield embed_rows_ray(
                        session.path, pool_path, ids, session.spec.to_dict(), ray, report
                    )
                    done += ids.size
                return
            if split == "pool":
                images: Iterator[np.ndarray] = (
                    x for _, x in r.iter_batches(np.arange(lo, hi), batch_size)
                )
            else:
                images = (
                    r.read_test(i, min(i + batch_size, hi))[0] for i in range(lo, hi, batch_size)
                )
            for x in images:
                yield session.embed(x)
                done += len(x)
                progress(STAGE, done, todo)

        encoder = None
        if new:  # its dimension, from one image, before anything is written
            probe = r.read_images(np.arange(1)) if r.num_rows else r.read_test(0, 1)[0]
            encoder = {**session.describe(), "dim": int(session.embed(probe).shape[1])}
        manifest = write_embeddings(
            pool_path,
            str(r.pool_id),
            rows,
            batches,
            encoder=encoder,
            encoder_file=session.path if new else None,
        )
    return manifest, done


def embed_pool(
    pool_path: str | Path,
    model: str | Path,
    *,
    spec: InputSpec | None = None,
    provider: str = "auto",
    batch_size: int | None = None,
    progress: Progress = silent,
    ray: RayOptions | None = None,
) -> tuple[Manifest, int]:
    """Embed every row of the pool (and its test split) with the ONNX encoder ``model`` and
    commit them, replacing earlier embeddings; takes the pool's writer lock. Returns the
    manifest and the rows embedded. With ``ray``, the pool's rows are embedded by Ray Data
    actors (the test split, small, here)."""
    pool_path = Path(pool_path)
    with PoolWriter(pool_path):  # one writer; refuses copies; cleans up what a dead one left
        session = EncoderSession(model, provider, spec=spec)
        return _write(
            pool_path,
            session,
            new=True,
            batch_size=batch_size or session.default_batch_size,
            progress=progress,
            ray=ray,
        )


def kept_encoder(pool_path: Path, manifest: Manifest, why: str) -> Path:
    """The encoder file the pool's embeddings were made with, checked against its SHA-256; one
    line (``why`` says what it is needed for) when it is missing or changed."""
    encoder = embed_dir(pool_path) / str(manifest.encoder["file"])
    if not encoder.is_file() or file_sha256(encoder) != manifest.encoder["sha256"]:
        raise PoolFormatError(
            f"{pool_path}: damaged embeddings: the encoder {encoder} is missing or changed, so "
            f"{why}; run `dgaal pool embed` again"
        )
    return encoder


def catch_up(pool_path: str | Path, *, provider: str = "auto", progress: Progress = silent) -> int:
    """Embed the rows that joined the pool since its embeddings were made, with the encoder they
    were made with; nothing when the pool has no embeddings. The caller holds the writer lock
    (a round does). Returns the rows embedded."""
    pool_path = Path(pool_path)
    manifest = read_manifest(pool_path)
    if manifest is None:
        return 0
    with PoolReader(pool_path) as r:
        if manifest.rows("pool") == r.num_rows and manifest.rows("test") == r.num_test:
            return 0
    encoder = kept_encoder(
        pool_path, manifest, "the rows that joined cannot be embedded like the others"
    )
    spec = InputSpec.from_dict(manifest.encoder.get("input") or {})
    session = EncoderSession(encoder, provider, spec=spec)
    _, done = _write(
        pool_path, session, new=False, batch_size=session.default_batch_size, progress=progress
    )
    return done


def round_embedder(provider: str = "auto") -> Embedder:
    """The round's :class:`~dgaal_core.loop.serving.Embedder`: :func:`catch_up` on ``provider``."""

    def embed(pool_path: Path, progress: Progress | None) -> int:
        return catch_up(pool_path, provider=provider, progress=progress or silent)

    return embed
