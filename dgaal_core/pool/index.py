"""The index file ``pools.h5``: everything but the pixels, held in memory as :class:`Index` and
written whole and atomically (a temporary file, fsync, ``os.replace``, fsync of the folder).

Inside the file ``pool/images`` and ``test/images`` are HDF5 *virtual datasets* over the shards
(relative paths, so a pool moves freely with its shard folder): any HDF5 reader sees one
``[N, H, W, C]`` array. The layout is the README's schema table (version 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dgaal_core.atomic import replacing
from dgaal_core.errors import PoolFormatError
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import (
    FORMAT,
    IMAGE_DTYPE,
    IMAGES,
    ROW_FIELDS,
    TRUTH_DTYPE,
    VERSION,
    shard_dir,
)
from dgaal_core.pool.shards import new_pool_id


@dataclass
class Index:
    """Everything ``pools.h5`` holds, in memory: per-row fields, shard lists, the round log and
    the free-form ``meta``."""

    image_shape: tuple[int, int, int]
    class_names: list[str]
    fields: dict[str, np.ndarray]
    pool_shards: list[tuple[str, int]]
    test_shards: list[tuple[str, int]] = field(default_factory=list)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    truth: np.ndarray | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    created: str = ""
    pool_id: str = field(default_factory=new_pool_id)
    checksums: dict[str, str] = field(default_factory=dict)  # shard name -> SHA-256

    @property
    def num_rows(self) -> int:
        """Rows of the pool split (real and generated images)."""
        return int(self.fields["state"].shape[0])

    def referenced(self) -> set[str]:
        """Names of every shard this index uses."""
        return {n for n, _ in self.pool_shards} | {n for n, _ in self.test_shards}


def _virtual(
    f: h5py.File, name: str, folder: str, shards: list[tuple[str, int]], shape: tuple[int, ...]
) -> None:
    """``name`` as one virtual [N, H, W, C] dataset over the shard files (for any HDF5 reader)."""
    total = sum(r for _, r in shards)
    if total == 0:
        f.create_dataset(name, shape=(0, *shape), dtype=IMAGE_DTYPE)
        return
    layout = h5py.VirtualLayout(shape=(total, *shape), dtype=IMAGE_DTYPE)
    start = 0
    for shard, rows in shards:
        # relative path: HDF5 resolves it against the index file's folder, so pools move freely
        src = h5py.VirtualSource(f"{folder}/{shard}", IMAGES, shape=(rows, *shape))
        layout[start : start + rows] = src
        start += rows
    f.create_virtual_dataset(name, layout)


def _write(f: h5py.File, ix: Index, folder: str) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["image_shape"] = np.asarray(ix.image_shape, dtype=np.int64)
    f.attrs["num_classes"] = len(ix.class_names)
    f.attrs["class_names"] = json.dumps(ix.class_names)
    f.attrs["generation"] = ix.generation
    f.attrs["pool_id"] = ix.pool_id
    f.attrs["created"] = ix.created
    f.attrs["meta"] = json.dumps(ix.meta)
    f.attrs["pool_shards"] = json.dumps(ix.pool_shards)
    f.attrs["test_shards"] = json.dumps(ix.test_shards)
    f.attrs["shard_sha256"] = json.dumps(ix.checksums)
    g = f.create_group("pool")
    for name, (dtype, _) in ROW_FIELDS.items():
        g.create_dataset(name, data=np.asarray(ix.fields[name], dtype=dtype))
    if ix.truth is not None:
        g.create_dataset("truth", data=np.asarray(ix.truth, dtype=TRUTH_DTYPE))
    _virtual(f, "pool/images", folder, ix.pool_shards, ix.image_shape)
    if ix.test_shards:
        _virtual(f, "test/images", folder, ix.test_shards, ix.image_shape)
        f.create_dataset("test/label", data=np.asarray(ix.test_labels, dtype=np.int32))
    log = f.create_group("log")
    log.create_dataset(
        "rounds",
        data=[json.dumps(r) for r in ix.rounds],
        dtype=h5py.string_dtype(),
        shape=(len(ix.rounds),),
    )


def write_index(path: Path, ix: Index) -> None:
    """Write ``ix`` to ``path`` atomically (see the module docstring)."""
    with replacing(path) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            _write(f, ix, shard_dir(path).name)
            f.flush()


def load_index(path: Path) -> Index:
    """Read the index of the pool at ``path`` (a pool made before pool ids gets one now)."""
    with PoolReader(path) as r:
        truth = r.read_truth(np.arange(r.num_rows)) if r.has_truth else None
        return Index(
            image_shape=r.image_shape,
            class_names=list(r.class_names),
            fields={k: v.copy() for k, v in r.fields.items()},
            pool_shards=[(s.name, s.rows) for s in r.pool_shards],
            test_shards=[(s.name, s.rows) for s in r.test_shards],
            test_labels=r.test_labels.copy(),
            truth=truth,
            rounds=r.rounds(),
            meta=dict(r.meta),
            generation=r.generation,
            created=str(r.meta.get("created", "")),
            pool_id=r.pool_id or new_pool_id(),
            checksums=dict(r.shard_sha256),
        )


def shards_of(path: Path) -> tuple[str | None, set[str]]:
    """The id and shard names of the pool at ``path`` (none if it is not a readable pool)."""
    try:
        with PoolReader(path) as r:
            return r.pool_id, {s.name for s in r.pool_shards} | {s.name for s in r.test_shards}
    except PoolFormatError:
        return None, set()
