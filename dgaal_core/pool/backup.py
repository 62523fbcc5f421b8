"""A second copy of what cannot be re-derived: ``pools.h5.backup.npz`` beside the index.

Every commit writes it (atomically, just before the index) with everything the index holds but
the pixels: the per-row fields, the hidden truth, the test labels, the shard lists and their
checksums, the round log and ``meta``, and the index's generation. When the index is damaged
(flipped bytes, a truncated copy), ``dgaal pool check --repair`` rebuilds it from the backup and
the shards. The file is a zip of ``.npy`` arrays: each member carries a CRC32, so damage to the
backup itself is found too. numpy only; nothing in it is a pickle.

A crash between the two writes leaves a backup one generation ahead of the index. Both are
complete states whose shards exist (shards are written before either), and the next writer
rewrites the backup from the index it opened.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.atomic import write_bytes
from dgaal_core.errors import PoolFormatError
from dgaal_core.pool.schema import ROW_FIELDS, TRUTH_DTYPE

SUFFIX = ".backup.npz"
FORMAT = "dgaal-pool-backup"
VERSION = 1


def backup_path(pool_path: Path) -> Path:
    """``pools.h5`` -> ``pools.h5.backup.npz``."""
    return pool_path.with_name(pool_path.name + SUFFIX)


def _state(ix: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "image_shape": list(ix.image_shape),
        "class_names": list(ix.class_names),
        "pool_shards": ix.pool_shards,
        "test_shards": ix.test_shards,
        "rounds": ix.rounds,
        "meta": ix.meta,
        "generation": ix.generation,
        "created": ix.created,
        "pool_id": ix.pool_id,
        "checksums": ix.checksums,
        "has_truth": ix.truth is not None,
    }


def backup_bytes(ix: Any, index_sha256: str = "", previous_sha256: str = "") -> bytes:
    """The backup file of the index ``ix`` (a :class:`dgaal_core.pool.index.Index`), with the
    SHA-256 of the index file it goes with and of the one it replaces (a reader accepts either:
    the two files are replaced one after the other)."""
    arrays = {f"field_{k}": np.asarray(v, dtype=ROW_FIELDS[k][0]) for k, v in ix.fields.items()}
    arrays["test_labels"] = np.asarray(ix.test_labels, dtype=np.int32)
    if ix.truth is not None:
        arrays["truth"] = np.asarray(ix.truth, dtype=TRUTH_DTYPE)
    text = json.dumps(_state(ix)).encode("utf-8")
    arrays["state"] = np.frombuffer(text, dtype=np.uint8)
    arrays["index_sha256"] = np.array([index_sha256, previous_sha256])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # stored, not deflated: cheap
    return buffer.getvalue()


def write_backup(pool_path: Path, ix: Any, index_sha256: str = "", previous: str = "") -> None:
    """Replace the backup of the pool at ``pool_path`` with ``ix``, atomically."""
    write_bytes(backup_path(pool_path), backup_bytes(ix, index_sha256, previous))


def index_seals(pool_path: Path) -> tuple[str, ...] | None:
    """The SHA-256 digests an intact index of this pool may have (the committed one and the one
    it replaced); None when there is no readable backup to say (an older pool)."""
    path = backup_path(pool_path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:  # reads only this member
            seals = tuple(str(v) for v in z["index_sha256"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return tuple(v for v in seals if v) or None


def read_backup(pool_path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The backup's state (JSON) and arrays; :class:`PoolFormatError` if missing or damaged."""
    path = backup_path(pool_path)
    if not path.is_file():
        raise PoolFormatError(f"{path}: no backup of {pool_path} (older pools have none)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reading checks every member's CRC32
        state = json.loads(arrays.pop("state").tobytes().decode("utf-8"))
        arrays.pop("index_sha256", None)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a dgaal pool backup")
        if int(state.get("version", 0)) > VERSION:
            raise ValueError(f"backup version {state['version']}, this dgaal reads {VERSION}")
        n = {arrays[f"field_{k}"].shape for k in ROW_FIELDS}
        if len(n) != 1:
            raise ValueError("its row fields have different lengths")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise PoolFormatError(f"{path}: damaged backup ({e})") from None
    return state, arrays
