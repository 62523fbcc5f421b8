"""Pool rows as the models read them: a :class:`~dgaal_core.model.data.DataSource` over pool ids
(:class:`PoolSource`), and T's outputs over pool rows (:func:`task_outputs`)."""

from __future__ import annotations

import numpy as np
import torch

from dgaal_core.errors import PoolFormatError
from dgaal_core.model.data import DataSource, EmbeddedSource, to_model_input
from dgaal_core.model.networks import ConvClassifier
from dgaal_core.model.training import resolve_device
from dgaal_core.pool.embeddings import Embeddings, open_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State

# Candidate/labelled images are held in memory up to this size; beyond it they are read from the
# pool file per batch (HDF5 random reads are slower, but memory stays bounded).
IN_MEMORY_BYTES = 2 << 30


class PoolSource:
    """A :class:`~dgaal_core.model.data.DataSource` over pool rows ``ids``: in memory when small,
    read from the pool file per batch otherwise."""

    def __init__(self, reader: PoolReader, ids: np.ndarray, labels: np.ndarray | None = None):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._reader = reader
        nbytes = self.ids.size * int(np.prod(reader.image_shape))
        self._images: np.ndarray | None = None
        if nbytes <= IN_MEMORY_BYTES:
            self._images = (
                reader.read_images(self.ids)
                if self.ids.size
                else np.zeros((0, *reader.image_shape), np.uint8)
            )

    def __len__(self) -> int:
        return int(self.ids.size)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (and labels) at positions ``indices`` of this source."""
        images = (
            self._images[indices]
            if self._images is not None
            else self._reader.read_images(self.ids[indices])
        )
        return images, None if self.labels is None else self.labels[indices]


@torch.no_grad()
def task_outputs(
    model: ConvClassifier,
    reader: PoolReader,
    ids: np.ndarray,
    *,
    batch_size: int = 512,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """T's softmax probabilities [N, K] and penultimate features [N, F] for pool rows ``ids``
    (ascending), streamed from the pool file."""
    dev = resolve_device(device)
    model.to(dev).eval()
    probs, feats = [], []
    for _, images in reader.iter_batches(ids, batch_size):
        x = to_model_input(images, dev)
        f = model.features(x)
        probs.append(torch.softmax(model.classifier(f), dim=1))  # (B, K)
        feats.append(f)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return (
        torch.cat(probs).float().cpu().numpy(),
        torch.cat(feats).float().flatten(1).cpu().numpy(),
    )


def pool_source(reader: PoolReader, state: State, *, labels: bool = False) -> PoolSource:
    """The rows of ``reader`` in ``state`` (with their revealed labels when ``labels``)."""
    ids = reader.ids(state)
    return PoolSource(reader, ids, reader.labels[ids] if labels else None)


def _embeddings(reader: PoolReader, embedding_dim: int) -> Embeddings:
    emb = open_embeddings(reader.path)
    if emb is None or emb.dim != embedding_dim:
        have = "none" if emb is None else f"{emb.dim}-d ones"
        raise PoolFormatError(
            f"{reader.path}: D1 reads {embedding_dim}-d embeddings and the pool has {have}; "
            "run `dgaal pool embed` again, or start a new run with --d1-input image"
        )
    return emb


def d1_sources(reader: PoolReader, embedding_dim: int, *states: State) -> list[DataSource]:
    """The rows D1 trains on in each of ``states``: with their stored embeddings when D1 reads
    those (``embedding_dim > 0``; the embeddings are read once), else as :func:`pool_source`."""
    sources = [pool_source(reader, state) for state in states]
    if not embedding_dim:
        return list(sources)
    emb = _embeddings(reader, embedding_dim)
    return [EmbeddedSource(s, emb.pool(s.ids)) for s in sources]


def d1_scale(reader: PoolReader, embedding_dim: int) -> np.ndarray | None:
    """The embeddings of every pool row, which D1's projection is standardised on when new;
    None when D1 reads G1's latent."""
    return _embeddings(reader, embedding_dim).split("pool") if embedding_dim else None
