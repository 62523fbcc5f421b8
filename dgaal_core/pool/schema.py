"""The pools.h5 schema, version 1: names, codes and dtypes, defined once.

Layout on disk (``pools.h5`` plus a shard folder beside it)::

    pools.h5                      small index file, rewritten whole and atomically per commit
    pools.shards/pool-<pool_id>-<id>.h5   append-only image shards ("images" uint8 [n, H, W, C])
    pools.shards/test-<pool_id>-<id>.h5   the test split's images
    pools.h5.lock                 writer lock (flock); pools.h5.lock.json names the holder

Inside ``pools.h5``, ``pool/images`` and ``test/images`` are HDF5 *virtual datasets* over the
shards, so any HDF5 reader sees one ``[N, H, W, C]`` array and never notices the shards.
See the README for the full table.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

import numpy as np

FORMAT = "dgaal-pool"
VERSION = 1


class State(IntEnum):
    """Where a pool row stands in the active-learning loop (``pool/state``)."""

    UNLABELLED = 0  # a candidate for selection (X_C in the paper)
    LABELLED = 1  # in (X_L, Y_L)
    QUERIED = 2  # selected and waiting for a person's answer
    EXCLUDED = 3  # never selected, never trained on


class Origin(IntEnum):
    """Whether a row is a real image or made by the generator G (``pool/origin``)."""

    REAL = 0
    GENERATED = 1


STATE_NAMES = {s: s.name.lower() for s in State}
ORIGIN_NAMES = {o: o.name.lower() for o in Origin}

# Per-row metadata arrays of the index file: name -> (dtype, fill value for a new real row).
ROW_FIELDS: dict[str, tuple[np.dtype, int]] = {
    "label": (np.dtype(np.int32), -1),  # revealed label, -1 = unknown
    "state": (np.dtype(np.uint8), int(State.UNLABELLED)),
    "origin": (np.dtype(np.uint8), int(Origin.REAL)),
    "parent": (np.dtype(np.int64), -1),  # source row of a generated image
    "depth": (np.dtype(np.uint8), 0),  # generation depth: 0 real, 1 = G(real), 2 = G(G(real))
    "round": (np.dtype(np.int16), -1),  # round in which the row became labelled (0 = initial)
}
TRUTH_DTYPE = np.dtype(np.int32)
IMAGE_DTYPE = np.dtype(np.uint8)

IMAGES = "images"  # dataset name inside a shard
SHARD_ROWS_PER_CHUNK_BYTES = 1 << 20  # aim for ~1 MiB HDF5 chunks along N


SHARD_KINDS = ("pool", "test")  # shard names: <kind>-<pool_id>-<16 hex>.h5


def owns_shard(pool_id: str, name: str) -> bool:
    """Whether the shard file ``name`` was written for the pool ``pool_id``."""
    return any(name.startswith(f"{kind}-{pool_id}-") for kind in SHARD_KINDS)


def shard_dir(pool_path: Path) -> Path:
    """Folder holding the image shards of the pool at ``pool_path``."""
    return pool_path.with_name(pool_path.stem + ".shards")


def lock_path(pool_path: Path) -> Path:
    """The writer-lock file of the pool at ``pool_path``."""
    return pool_path.with_name(pool_path.name + ".lock")


def chunk_rows(image_shape: tuple[int, int, int]) -> int:
    """Rows per HDF5 chunk so that one chunk is about 1 MiB (at least 1, at most 4096)."""
    per_image = int(np.prod(image_shape))
    return int(max(1, min(4096, SHARD_ROWS_PER_CHUNK_BYTES // per_image)))
