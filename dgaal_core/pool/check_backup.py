"""The backup's part of ``dgaal pool check``: is the second copy (:mod:`dgaal_core.pool.backup`)
there and the same as the index, rebuilding a damaged index from it (``--repair``), and
reading an index that has no backup to vouch for it in a child process first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import PoolFormatError, StorageError
from dgaal_core.pool.backup import backup_path, read_backup, write_backup
from dgaal_core.pool.findings import CHECKS, Finding
from dgaal_core.pool.index import index_from_backup, load_index, write_index
from dgaal_core.pool.lock import WriterLock
from dgaal_core.pool.schema import ROW_FIELDS, shard_dir
from dgaal_core.pool.shards import file_sha256, seal_holds

REBUILD = "rebuild the index from its backup"
PURPOSE = "dgaal pool check --repair"


def _backup_or_error(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    try:
        state, arrays = read_backup(path)
    except PoolFormatError as e:
        return None, {}, str(e)
    return state, arrays, ""


def _same(
    state: dict[str, Any],
    arrays: Any,
    generation: int | None,
    fields: dict[str, np.ndarray] | None,
    rounds: list[Any] | None,
    meta: dict[str, Any] | None,
) -> bool:
    """Whether the backup holds exactly what the index parsed to."""
    if fields is None or int(state["generation"]) != generation:
        return False
    if state["rounds"] != rounds or state["meta"] != meta:
        return False
    return all(np.array_equal(arrays[f"field_{k}"].astype(np.int64), fields[k]) for k in ROW_FIELDS)


def backup_finding(
    path: Path,
    index_damaged: bool,
    generation: int | None,
    fields: dict[str, np.ndarray] | None,
    rounds: list[Any] | None,
    meta: dict[str, Any] | None,
) -> Finding:
    """The ``backup`` row, given whether the index checks found damage and what they parsed
    (None where they could not). A damaged index is rebuilt from a backup of its generation
    (or one ahead); a healthy index that differs from its backup rewrites the backup."""
    if not backup_path(path).exists():
        return Finding(
            "backup", "ok", "none yet (a pool of an older dgaal): the next commit writes one"
        )
    state, arrays, error = _backup_or_error(path)
    parsed = None not in (generation, fields, rounds, meta)
    if state is None:
        healthy = parsed and not index_damaged
        why = "rewrite it from the index" if healthy else "the index is damaged too"
        return Finding("backup", "damaged", error, repair=why, repairable=healthy)
    have = int(state["generation"])
    if index_damaged and parsed and _same(state, arrays, generation, fields, rounds, meta):
        return Finding(  # what is wrong is in both copies: rebuilding would change nothing
            "backup", "ok", f"generation {have}, the same as the index (its damage included)"
        )
    if index_damaged:
        if generation is not None and have < generation:
            return Finding(
                "backup", "damaged",
                f"generation {have}, older than the index's {generation}: it cannot rebuild it",
            )  # fmt: skip
        return Finding("backup", "ok", f"generation {have}: it can rebuild the damaged index")
    if not parsed:
        return Finding("backup", "skipped", "the index did not parse")
    assert fields is not None and generation is not None
    if have == generation + 1:  # a crash between the backup's write and the index's
        return Finding(
            "backup", "ok", f"one commit ahead (generation {have}); the next writer rewrites it"
        )
    if not _same(state, arrays, generation, fields, rounds, meta):
        return Finding(
            "backup", "damaged",
            f"generation {have} differs from the index's {generation}",
            repair="rewrite it from the index", repairable=True,
        )  # fmt: skip
    return Finding("backup", "ok", f"the same as the index (generation {have})")


def unopenable(path: Path, error: str) -> list[Finding] | None:
    """The findings for an index that does not open at all, when its backup can rebuild it
    (None when there is no readable backup: then there is no pool to check)."""
    state, _, _ = _backup_or_error(path)
    if state is None:
        return None
    gen, rounds = int(state["generation"]), len(state["rounds"])
    out = [
        Finding(
            "attributes", "damaged", f"the index does not open ({error})",
            repair=f"{REBUILD} (generation {gen}, {rounds} rounds)", repairable=True,
        )
    ]  # fmt: skip
    out += [Finding(c, "skipped", "the index does not open") for c in CHECKS[1:-1]]
    out.append(Finding("backup", "ok", f"generation {gen}: it can rebuild the damaged index"))
    return out


def rebuild_index(path: Path) -> str:
    """``--repair``: the index rebuilt from the backup, under the writer lock, after checking
    that every shard the backup names is there and unchanged. Returns what was done."""
    with WriterLock(path, PURPOSE, 0.0):
        ix = index_from_backup(path)
        for name, _ in ix.pool_shards + ix.test_shards:
            shard = shard_dir(path) / name
            seal = ix.checksums.get(name)
            if not shard.is_file() or (seal is not None and not seal_holds(shard, seal)):
                raise StorageError(
                    f"{shard}: missing or changed, so the backup cannot rebuild {path}; restore "
                    "the shard from a backup first"
                )
        ix.generation += 1
        write_index(path, ix)
    return (
        f"rebuilt {path} from its backup: {ix.num_rows} rows, {len(ix.rounds)} rounds, labels "
        "and states as of the last commit"
    )


def rewrite_backup(path: Path) -> str:
    """``--repair``: the backup rewritten from the (healthy) index, under the writer lock."""
    with WriterLock(path, PURPOSE, 0.0):
        write_backup(path, load_index(path), file_sha256(path))
    return f"rewrote {backup_path(path)} from the index"


# Reads every attribute and dataset of an index in a child process: damaged HDF5 metadata can
# crash the library (a segfault), and a check must report that, not die of it.
_PROBE = (
    "import sys, h5py\n"
    "with h5py.File(sys.argv[1], 'r', locking=False) as f:\n"
    "    dict(f.attrs)\n"
    "    f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) "
    "and not obj.is_virtual else None)\n"
)


def crashes_hdf5(path: Path) -> str:
    """What went wrong when a child process read the index, if it crashed ("" if it did not)."""
    ran = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, timeout=600
    )
    if ran.returncode >= 0:
        return ""
    return f"reading the index crashes HDF5 (signal {-ran.returncode}): its metadata is damaged"
