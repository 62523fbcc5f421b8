"""Reading a pool: metadata, ids by state, and images streamed in id order.

Imports numpy and h5py only (never torch), so the ONNX runtime and other services can embed it.
An image's id is its row in ``pool/images`` everywhere in dgaal.

Readers never block each other or a writer: a writer replaces ``pools.h5`` atomically with
``os.replace``, so an open reader keeps the version it opened. Open a reader in the process that
uses it (h5py handles must not cross a fork).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dgaal_core.errors import PoolFormatError
from dgaal_core.pool.backup import index_seals
from dgaal_core.pool.blocks import contiguous_runs, read_ahead
from dgaal_core.pool.schema import (
    FORMAT,
    IMAGES,
    ORIGIN_NAMES,
    ROW_FIELDS,
    STATE_NAMES,
    TRUTH_DTYPE,
    VERSION,
    Origin,
    State,
    shard_dir,
)
from dgaal_core.pool.shards import seal_holds


@dataclass(frozen=True)
class Shard:
    """One image shard file and the pool rows ``[start, start + rows)`` it holds."""

    name: str
    start: int
    rows: int


def _shards_from_attr(raw: Any) -> list[Shard]:
    """``[[name, rows], ...]`` (the index's shard list) as :class:`Shard` row ranges."""
    entries = json.loads(raw) if raw else []
    out, start = [], 0
    for name, rows in entries:
        out.append(Shard(str(name), start, int(rows)))
        start += int(rows)
    return out


class _ShardedImages:
    """Rows of one image split (pool or test) read straight from its shard files."""

    def __init__(
        self,
        pool_path: Path,
        shards: Sequence[Shard],
        image_shape: tuple[int, int, int],
        seals: dict[str, str] | None = None,
    ):
        self._dir = shard_dir(pool_path)
        self._seals = seals or {}  # shard name -> SHA-256 sealed when it was written
        self._shards = shards
        self._starts = np.array([s.start for s in shards], dtype=np.int64)
        self._files: dict[str, h5py.File] = {}
        self.image_shape = image_shape
        self.rows = shards[-1].start + shards[-1].rows if shards else 0
        self._pool_path = pool_path

    def check(self) -> None:
        """Fail with a clear error if a shard file is missing or holds the wrong rows."""
        for s in self._shards:
            ds = self._dataset(s)
            if ds.shape[0] != s.rows or tuple(ds.shape[1:]) != self.image_shape:
                raise PoolFormatError(
                    f"{self._pool_path}: damaged pool: shard {s.name} holds {ds.shape}, expected "
                    f"({s.rows}, {', '.join(map(str, self.image_shape))})"
                )

    def _dataset(self, s: Shard) -> h5py.Dataset:
        f = self._files.get(s.name)
        if f is None:
            path = self._dir / s.name
            try:
                # 64 MiB chunk cache: neighbouring single-row reads hit the same cached chunk.
                f = h5py.File(path, "r", locking=False, rdcc_nbytes=64 << 20)
            except FileNotFoundError:
                raise PoolFormatError(
                    f"{self._pool_path}: damaged pool: its image shard {path} is missing"
                ) from None
            except OSError as e:
                raise PoolFormatError(
                    f"{self._pool_path}: damaged pool: its image shard {path} is unreadable ({e})"
                ) from None
            seal = self._seals.get(s.name)
            if seal is not None and not seal_holds(path, seal):
                f.close()
                raise PoolFormatError(
                    f"{self._pool_path}: damaged pool: its image shard {path} has changed since "
                    "it was written (checksum mismatch); its images are not used. Run `dgaal "
                    "pool check` and restore the shard from a backup"
                )
            ds = f.get(IMAGES)
            if ds is None or tuple(ds.shape[1:]) != self.image_shape or ds.shape[0] < s.rows:
                shape = None if ds is None else ds.shape
                f.close()
                raise PoolFormatError(
                    f"{self._pool_path}: damaged pool: its image shard {path} holds {shape}, "
                    f"expected ({s.rows}, {', '.join(map(str, self.image_shape))})"
                )
            self._files[s.name] = f
        return f[IMAGES]

    def read_range(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` as one uint8 array, crossing shard boundaries as needed."""
        out = np.empty((hi - lo, *self.image_shape), dtype=np.uint8)
        i = int(np.searchsorted(self._starts, lo, side="right")) - 1
        pos = lo
        while pos < hi:
            s = self._shards[i]
            end = min(hi, s.start + s.rows)
            self._dataset(s).read_direct(
                out, np.s_[pos - s.start : end - s.start], np.s_[pos - lo : end - lo]
            )
            pos, i = end, i + 1
        return out

    def read(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any order, repeats allowed) via merged contiguous block reads."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(
                f"image ids must lie in [0, {self.rows}); got {ids.min()}..{ids.max()}"
            )
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        out = np.empty((ids.size, *self.image_shape), dtype=np.uint8)
        for a, b in contiguous_runs(sorted_ids):
            lo, hi = int(sorted_ids[a]), int(sorted_ids[b - 1]) + 1
            block = self.read_range(lo, hi)
            out[order[a:b]] = block[sorted_ids[a:b] - lo]
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def check_index_seal(path: Path) -> None:
    """:class:`PoolFormatError` when the index's bytes match neither digest its backup records
    (flipped bits, a torn copy): HDF5 must not read it. Once per file version per process."""
    seals = index_seals(path)
    if seals is not None and not any(seal_holds(path, s) for s in seals):
        raise PoolFormatError(
            f"{path}: damaged pool index (its bytes are not those its last commit wrote); "
            "`dgaal pool check --repair` rebuilds it from its backup"
        )


class PoolReader:
    """Read-only view of a pool file. Use as a context manager, or call :meth:`close`.

    Per-row metadata (a few bytes per image) is loaded on open; images are read on demand.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise PoolFormatError(f"{self.path}: no such pool file")
        check_index_seal(self.path)  # before HDF5 parses it: damaged metadata can crash HDF5
        try:
            f = h5py.File(self.path, "r", locking=False)
        except (OSError, RuntimeError) as e:
            raise PoolFormatError(f"{self.path}: not an HDF5 file ({e})") from None
        with f:
            self._load(f)
        seals = self.shard_sha256
        self._images = _ShardedImages(self.path, self.pool_shards, self.image_shape, seals)
        self._test = _ShardedImages(self.path, self.test_shards, self.image_shape, seals)

    def _load(self, f: h5py.File) -> None:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise PoolFormatError(f"{self.path}: not a dgaal pool (format attribute is {fmt!r})")
        try:
            version = int(f.attrs.get("version", -1))
        except (TypeError, ValueError):
            raise PoolFormatError(
                f"{self.path}: damaged pool, its version attribute is "
                f"{f.attrs.get('version')!r}; run `dgaal pool check` for details"
            ) from None
        if version != VERSION:
            raise PoolFormatError(
                f"{self.path}: pool format version {version}, this dgaal reads version {VERSION}"
            )
        try:
            self.image_shape: tuple[int, int, int] = tuple(int(v) for v in f.attrs["image_shape"])  # type: ignore[assignment]
            self.num_classes = int(f.attrs["num_classes"])
            self.class_names: list[str] = json.loads(f.attrs["class_names"])
            self.generation = int(f.attrs["generation"])
            pool_id = f.attrs.get("pool_id")  # absent in pools made before ids existed
            self.pool_id: str | None = None if pool_id is None else str(pool_id)
            self.meta: dict[str, Any] = json.loads(f.attrs.get("meta", "{}"))
            # the image shards of each split, in row order
            self.pool_shards = tuple(_shards_from_attr(f.attrs.get("pool_shards", "[]")))
            self.test_shards = tuple(_shards_from_attr(f.attrs.get("test_shards", "[]")))
            # SHA-256 of each shard file (absent in pools made before checksums existed)
            self.shard_sha256: dict[str, str] = dict(json.loads(f.attrs.get("shard_sha256", "{}")))
            self.fields = {name: f["pool"][name][()] for name in ROW_FIELDS}
            self._has_truth = "truth" in f["pool"]
            self.test_labels = f["test/label"][()] if "test" in f else np.zeros(0, np.int32)
            self._rounds = [json.loads(s) for s in f["log/rounds"].asstr()[()]]
        except KeyError as e:
            raise PoolFormatError(f"{self.path}: damaged pool, missing {e}") from None
        except (ValueError, TypeError) as e:  # garbage in an attribute (JSON, numbers)
            raise PoolFormatError(
                f"{self.path}: damaged pool, an attribute does not parse ({e}); "
                "run `dgaal pool check` for details"
            ) from None
        n = sum(s.rows for s in self.pool_shards)
        for name, arr in self.fields.items():
            if arr.shape != (n,):
                raise PoolFormatError(
                    f"{self.path}: pool/{name} has {arr.shape[0]} rows, images {n}"
                )

    # ---- metadata -------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Number of pool rows (real and generated images)."""
        return self._images.rows

    @property
    def num_test(self) -> int:
        """Number of images in the test split."""
        return self._test.rows

    @property
    def labels(self) -> np.ndarray:
        """Revealed labels, int32 [N], -1 where unknown."""
        return self.fields["label"]

    @property
    def states(self) -> np.ndarray:
        """Row states, uint8 [N] (values of :class:`State`)."""
        return self.fields["state"]

    @property
    def has_truth(self) -> bool:
        """Whether the pool stores hidden ground truth for a simulated oracle."""
        return self._has_truth

    def ids(self, state: State | None = None, origin: Origin | None = None) -> np.ndarray:
        """Sorted int64 ids of the rows with the given state and/or origin (all rows if None)."""
        mask = np.ones(self.num_rows, dtype=bool)
        if state is not None:
            mask &= self.fields["state"] == int(state)
        if origin is not None:
            mask &= self.fields["origin"] == int(origin)
        return np.flatnonzero(mask).astype(np.int64)

    def rounds(self) -> list[dict[str, Any]]:
        """The round log: one dict per finished round, oldest first."""
        return [dict(r) for r in self._rounds]

    def read_truth(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Hidden ground truth of ``ids``. Only the simulated oracle may call this."""
        if not self._has_truth:
            raise PoolFormatError(
                f"{self.path}: pool has no ground truth (created with --no-truth)"
            )
        with h5py.File(self.path, "r", locking=False) as f:
            truth = f["pool/truth"][()]
        return np.asarray(truth, dtype=TRUTH_DTYPE)[np.asarray(ids, dtype=np.int64)]

    # ---- images ---------------------------------------------------------------------------
    def shard_files(self) -> list[tuple[Path, int, int]]:
        """``(path, first pool row, rows)`` of each image shard, in row order."""
        folder = shard_dir(self.path)
        return [(folder / s.name, s.start, s.rows) for s in self.pool_shards]

    def check_shards(self) -> None:
        """Open every shard and verify its shape; raises :class:`PoolFormatError` if damaged."""
        self._images.check()
        self._test.check()

    def read_images(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of ``ids`` as uint8 [len(ids), H, W, C], in the order given."""
        return self._images.read(np.asarray(ids, dtype=np.int64))

    def read_test(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Test images and labels ``[start, stop)`` (all by default)."""
        stop = self.num_test if stop is None else min(stop, self.num_test)
        if stop <= start:
            return np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int32)
        return self._test.read_range(start, stop), self.test_labels[start:stop]

    def iter_batches(
        self,
        ids: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 256,
        prefetch: int = 2,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, images)`` batches in ascending id order, reading ahead on a thread.

        Memory stays flat in pool size: at most ``prefetch + 1`` batches are alive at once.
        ``prefetch=0`` reads on the calling thread.
        """
        all_ids = self.ids() if ids is None else np.unique(np.asarray(ids, dtype=np.int64))
        batches = (all_ids[i : i + batch_size] for i in range(0, all_ids.size, max(1, batch_size)))
        if prefetch <= 0:
            for b in batches:
                yield b, self._images.read(b)
            return
        yield from read_ahead(batches, self._images.read, prefetch)

    def summary(self) -> dict[str, Any]:
        """Counts for ``dgaal pool info --json`` (keys documented in the README)."""
        st, org = self.fields["state"], self.fields["origin"]
        per_class: dict[str, dict[str, int]] = {}
        labels = self.fields["label"]
        for c, name in enumerate(self.class_names):
            per_class[name] = {
                "labelled": int(np.sum((labels == c) & (st == State.LABELLED))),
                "test": int(np.sum(self.test_labels == c)),
            }
        files = [self.path, *(shard_dir(self.path) / s.name for s in self.pool_shards)]
        files += [shard_dir(self.path) / s.name for s in self.test_shards]
        return {
            "path": str(self.path),
            "images": self.num_rows,
            **{STATE_NAMES[s]: int(np.sum(st == s)) for s in State},
            "real": int(np.sum(org == Origin.REAL)),
            ORIGIN_NAMES[Origin.GENERATED]: int(np.sum(org == Origin.GENERATED)),
            "test": self.num_test,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "has_truth": self._has_truth,
            "per_class": per_class,
            "rounds": self.rounds(),
            "generation": self.generation,
            "pool_id": self.pool_id,
            "file_bytes": int(sum(p.stat().st_size for p in files if p.exists())),
        }

    def close(self) -> None:
        """Close any open shard files."""
        self._images.close()
        self._test.close()

    def __enter__(self) -> PoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
