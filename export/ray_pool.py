"""Pool rows as a Ray Dataset: read tasks that each read a contiguous run of ids inside one image
shard, opened with h5py inside the Ray worker (no handle ever crosses processes)."""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.pool.blocks import contiguous_runs
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import IMAGES
from dgaal_core.pool.shards import seal_holds

from .ray_cluster import RayEngineError, require_ray


@dataclass(frozen=True)
class _ReadSpec:
    shard: str  # absolute path of the shard file
    start: int  # the shard's first pool row
    ids: np.ndarray  # ascending pool ids inside this shard


def _open_shard(pool: str, shard: str, image_shape: tuple[int, ...], last: int) -> Any:
    """The open h5py file of ``shard``, checked to hold rows ``0..last`` of ``image_shape``;
    else :class:`RayEngineError` naming this node, the shard and the pool."""
    import h5py

    where = f"node {socket.gethostname()}"
    try:
        f = h5py.File(shard, "r", locking=False)
    except OSError as e:
        raise RayEngineError(
            f"{where} cannot open shard {shard} of pool {pool} ({e}); every node must "
            "reach the pool's files at the same path"
        ) from None
    ds = f.get(IMAGES)
    if ds is None or tuple(ds.shape[1:]) != image_shape or last >= ds.shape[0]:
        shape = None if ds is None else ds.shape
        f.close()
        raise RayEngineError(
            f"{where}: shard {shard} of pool {pool} holds {shape}, which does not match the "
            "pool's index (run `dgaal pool check`)"
        )
    return f


def _read_spec(pool: str, spec: _ReadSpec, image_shape: tuple[int, ...]) -> list[Any]:
    """Runs inside a Ray worker: read ``spec.ids`` from one shard, return one block."""
    from ray.data.block import BlockAccessor

    local = spec.ids - spec.start
    with _open_shard(pool, spec.shard, image_shape, int(local[-1]) if local.size else -1) as f:
        ds = f[IMAGES]
        images = np.empty((local.size, *image_shape), np.uint8)
        for a, b in contiguous_runs(local):
            lo, hi = int(local[a]), int(local[b - 1]) + 1
            images[a:b] = ds[lo:hi][local[a:b] - lo]
    return [BlockAccessor.batch_to_block({"id": spec.ids, "image": images})]


def _datasource_class() -> type:
    """:class:`PoolDatasource`, defined when Ray is importable (it subclasses Ray's)."""
    ray = require_ray()
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    class PoolDatasource(ray.data.Datasource):  # type: ignore[name-defined]
        """Read tasks over contiguous id runs of one shard each (ascending ids)."""

        def __init__(self, pool: str | Path, ids: np.ndarray, rows_per_task: int) -> None:
            super().__init__()
            self.pool = str(Path(pool).resolve())
            with PoolReader(self.pool) as r:
                self.image_shape = tuple(int(v) for v in r.image_shape)
                shards = r.shard_files()
                seals = r.shard_sha256
            self.specs: list[_ReadSpec] = []
            for path, start, rows in shards:
                lo, hi = np.searchsorted(ids, [start, start + rows])
                inside = ids[lo:hi]
                if inside.size:  # check on the driver first: a failed Ray run is slow to undo
                    _open_shard(self.pool, str(path), self.image_shape, rows - 1).close()
                    if path.name in seals and not seal_holds(path, seals[path.name]):
                        raise RayEngineError(
                            f"shard {path} of pool {self.pool} has changed since it was "
                            "written (checksum mismatch); run `dgaal pool check`"
                        )
                for i in range(0, inside.size, rows_per_task):
                    self.specs.append(_ReadSpec(str(path), start, inside[i : i + rows_per_task]))
            self.image_bytes = int(np.prod(self.image_shape))

        def estimate_inmemory_data_size(self) -> int:
            return sum(s.ids.size for s in self.specs) * (self.image_bytes + 8)

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
        ) -> list[Any]:
            tasks = []
            for spec in self.specs:
                meta = BlockMetadata(
                    num_rows=int(spec.ids.size),
                    size_bytes=int(spec.ids.size * (self.image_bytes + 8)),
                    input_files=(spec.shard,),
                    exec_stats=None,
                )
                tasks.append(
                    ReadTask(functools.partial(_read_spec, self.pool, spec, self.image_shape), meta)
                )
            return tasks

    return PoolDatasource


def pool_dataset(pool: str | Path, ids: np.ndarray, rows_per_task: int = 4096) -> Any:
    """A Ray Dataset of ``{"id": int64, "image": uint8 [H, W, C]}`` over pool rows ``ids``."""
    ray = require_ray()
    source = _datasource_class()(pool, np.asarray(ids, dtype=np.int64), rows_per_task)
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.specs)))
