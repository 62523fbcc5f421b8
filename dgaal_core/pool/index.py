"""The index file ``pools.h5``: everything but the pixels, held in memory as :class:`Index` and
written whole and atomically (a temporary file, fsync, ``os.replace``, fsync of the folder).

Inside the file ``pool/images`` and ``test/images`` are HDF5 *virtual datasets* over the shards
(relative paths, so a pool moves freely with its shard folder): any HDF5 reader sees one
``[N, H, W, C]`` array. The layout is the README's schema table (version 1).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dgaal_core.atomic import TMP_MARK, require_space, write_bytes
from dgaal_core.errors import PoolCopyError, PoolFormatError
from dgaal_core.pool.backup import backup_path, read_backup, write_backup
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
from dgaal_core.pool.shards import file_sha256, new_pool_id


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


def index_bytes(ix: Index) -> int:
    """A generous estimate of the size of ``ix`` as an HDF5 file."""
    per_row = sum(dtype.itemsize for dtype, _ in ROW_FIELDS.values()) + TRUTH_DTYPE.itemsize
    text = len(json.dumps(ix.meta)) + sum(len(json.dumps(r)) + 64 for r in ix.rounds)
    shards = 256 * (len(ix.pool_shards) + len(ix.test_shards))  # names, sums, virtual maps
    return int(1.25 * (per_row * (ix.num_rows + ix.test_labels.size) + text + shards)) + (64 << 10)


def write_index(path: Path, ix: Index) -> None:
    """Write ``ix`` to ``path`` atomically (see the module docstring), after checking that the
    file system has room for it (HDF5 does not survive a full disk mid-write), and its backup
    (:mod:`dgaal_core.pool.backup`) just before it."""
    require_space(path.parent, 2 * index_bytes(ix), f"the pool index {path.name}")
    buffer = io.BytesIO()  # built in memory: a full disk then fails a plain write, not HDF5
    with h5py.File(buffer, "w") as f:
        _write(f, ix, shard_dir(path).name)
    data = buffer.getvalue()
    previous = file_sha256(path) if path.is_file() else ""
    # the second copy first (with the new index's digest): a damaged index is rebuilt from it
    write_backup(path, ix, hashlib.sha256(data).hexdigest(), previous)
    write_bytes(path, data)


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


@dataclass(frozen=True)
class Sibling:
    """Another pool index beside this one with the same stem (``pools.h5`` and ``pools.hdf5``):
    it shares this pool's shard folder and work folder."""

    path: Path
    pool_id: str | None
    shards: frozenset[str]


def siblings(path: Path) -> list[Sibling]:
    """The other readable dgaal pools in ``path``'s folder whose name has ``path``'s stem. Read
    straight from their attributes (cheap); files that are not pools are skipped."""
    out = []
    folder = path.parent if str(path.parent) else Path(".")
    for other in sorted(folder.glob(f"{glob_escape(path.stem)}.*")):
        if other.stem != path.stem or other.name == path.name or not other.is_file():
            continue
        if other.suffix in (".lock", ".json") or TMP_MARK in other.name:
            continue
        try:
            with h5py.File(other, "r", locking=False) as f:
                if f.attrs.get("format") != FORMAT:
                    continue
                pool_id = f.attrs.get("pool_id")
                names = {n for n, _ in json.loads(f.attrs.get("pool_shards", "[]"))}
                names |= {n for n, _ in json.loads(f.attrs.get("test_shards", "[]"))}
        except (OSError, ValueError, TypeError):
            continue
        out.append(Sibling(other, None if pool_id is None else str(pool_id), frozenset(names)))
    return out


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def refuse_copies(path: Path, pool_id: str) -> None:
    """:class:`PoolCopyError` when another index beside ``path`` is the same pool (a ``cp p.h5
    p.hdf5``): the two would overwrite each other's rounds and delete each other's shards."""
    twins = [s.path for s in siblings(path) if s.pool_id == pool_id]
    if twins:
        raise PoolCopyError(
            f"{path} and {twins[0]} are the same pool (pool id {pool_id}) and share "
            f"{shard_dir(path)} and {path.with_name(path.stem + '.dgaal')}: writing either "
            "would damage the other; delete one, or copy the pool to another folder with its "
            f"shard folder (cp -a {path.name} {shard_dir(path).name} DEST/)"
        )


def index_from_backup(path: Path) -> Index:
    """The index of the pool at ``path`` as its backup holds it (:class:`PoolFormatError` when
    the backup is missing or damaged)."""
    state, arrays = read_backup(path)
    try:
        return Index(
            image_shape=tuple(int(v) for v in state["image_shape"]),  # type: ignore[arg-type]
            class_names=[str(c) for c in state["class_names"]],
            fields={k: arrays[f"field_{k}"] for k in ROW_FIELDS},
            pool_shards=[(str(n), int(r)) for n, r in state["pool_shards"]],
            test_shards=[(str(n), int(r)) for n, r in state["test_shards"]],
            test_labels=arrays["test_labels"],
            truth=arrays.get("truth") if state["has_truth"] else None,
            rounds=list(state["rounds"]),
            meta=dict(state["meta"]),
            generation=int(state["generation"]),
            created=str(state.get("created", "")),
            pool_id=str(state["pool_id"]),
            checksums=dict(state["checksums"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PoolFormatError(f"{backup_path(path)}: damaged backup ({e!r})") from None


def refresh_backup(path: Path, ix: Index) -> None:
    """Rewrite the backup when it is missing (an older pool) or not of ``ix``'s generation (a
    crash between the backup and the index of the last commit). Call under the writer lock."""
    try:
        state, _ = read_backup(path)
        current = int(state.get("generation", -1)) == ix.generation
    except PoolFormatError:
        current = False
    if not current:
        require_space(path.parent, index_bytes(ix), f"the backup of {path.name}")
        write_backup(path, ix, file_sha256(path))
