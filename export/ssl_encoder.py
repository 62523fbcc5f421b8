"""``dgaal pool embed POOL --train``: an encoder trained on the pool's own images, then used as
any ONNX encoder is.

SimCLR (:mod:`dgaal_core.model.ssl`) on the pool's real images (never its test split, never
generated rows), exported to ONNX (uint8 NHWC in, the normalisation inside, (N, D) out), checked
against PyTorch, and handed to :func:`export.embed.embed_pool`, which embeds the pool and its test
split and keeps the file beside the pool, so rows that join later get the same encoder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dgaal_core.errors import EmptyPoolError
from dgaal_core.model.data import DataSource
from dgaal_core.model.ssl import SSLConfig, SSLEncoder, SSLReport, train_ssl_encoder
from dgaal_core.pool.embeddings import Manifest
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.pool.writer import PoolWriter
from dgaal_core.progress import Progress, silent

from . import names
from .embed import embed_pool
from .encoder import EncoderSession
from .errors import ExportParityError
from .metadata import set_metadata
from .onnx_export import _torch_export

if TYPE_CHECKING:
    from .ray_cluster import RayOptions

PARITY_ATOL = 1e-3  # ONNX vs PyTorch embeddings (float32 convolutions in another order)


def export_ssl_encoder(
    encoder: SSLEncoder, path: Path, name: str, parity_images: np.ndarray
) -> float:
    """Write ``encoder`` to ``path`` as an ONNX image encoder and check it on ``parity_images``;
    returns the largest absolute difference from PyTorch."""
    import onnx

    example = torch.from_numpy(np.ascontiguousarray(parity_images[:2]))
    _torch_export(encoder, (example,), path, (names.IMAGES,), ("embedding",), False, ("embedding",))
    model = onnx.load(str(path))
    set_metadata(model, {"dgaal.encoder": name, "dgaal.input_layout": "nhwc"})
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    with torch.inference_mode():
        ref = encoder(torch.from_numpy(np.ascontiguousarray(parity_images))).numpy()
    got = EncoderSession(path, provider="cpu").embed(parity_images)
    diff = float(np.max(np.abs(got - ref), initial=0.0))
    if not diff <= PARITY_ATOL * max(1.0, float(np.abs(ref).max(initial=0.0))):
        path.unlink(missing_ok=True)
        raise ExportParityError(
            f"{path}: the trained encoder's ONNX differs from PyTorch by {diff}"
        )
    return diff


def _training_source(reader: PoolReader) -> DataSource:
    from dgaal_core.loop.sources import PoolSource

    ids = reader.ids(origin=Origin.REAL)
    return PoolSource(reader, ids[reader.states[ids] != State.EXCLUDED])  # in memory when small


def train_and_embed(
    pool_path: str | Path,
    config: SSLConfig,
    *,
    provider: str = "auto",
    batch_size: int | None = None,
    progress: Progress = silent,
    ray: RayOptions | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Manifest, int, SSLReport]:
    """Train an encoder on ``pool_path``'s real images, then embed the pool with it (replacing
    earlier embeddings). Returns the manifest, the rows embedded and the training report."""
    pool_path = Path(pool_path)
    # what would stop the embedding afterwards (another writer, an unwritable folder) is found
    # before the minutes of training, not after them
    with PoolWriter(pool_path, purpose="dgaal pool embed --train"):
        pass
    tmp = Path(tempfile.mkdtemp(prefix=".encoder-", dir=pool_path.parent))
    try:
        return _train_and_embed(pool_path, config, tmp, provider, batch_size, progress, ray, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train_and_embed(
    pool_path: Path, config: SSLConfig, tmp: Path, provider: str, batch_size: int | None,
    progress: Progress, ray: RayOptions | None, log: Callable[[str], None],
) -> tuple[Manifest, int, SSLReport]:  # fmt: skip
    with PoolReader(pool_path) as reader:
        source = _training_source(reader)
        if len(source) < 2:
            raise EmptyPoolError(f"{pool_path}: --train needs at least two real images")
        encoder, report = train_ssl_encoder(source, config, progress)
        parity = source.get(np.arange(min(64, len(source))))[0]
    capped = f", stopped by --minutes {config.minutes:g}" if report.stopped_by_time else ""
    log(
        f"trained the encoder on {len(source)} images: {report.steps} steps "
        f"({report.epochs:.1f} epochs) in {report.seconds:.0f} s{capped}; "
        f"NT-Xent {report.first_loss:.2f} -> {report.last_loss:.2f}"
    )
    name = (
        f"dgaal-simclr-w{config.width} ({report.steps} steps on {pool_path.name}, "
        f"seed {config.seed})"
    )
    model = tmp / "encoder.onnx"
    export_ssl_encoder(encoder, model, name, parity)
    manifest, rows = embed_pool(
        pool_path, model, provider=provider, batch_size=batch_size, progress=progress, ray=ray
    )  # fmt: skip
    return manifest, rows, report
