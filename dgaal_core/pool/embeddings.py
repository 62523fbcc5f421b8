"""Pool embeddings: one vector per pool row (and per test row) from an image encoder, stored
beside the pool (embeddings format, version 1).

Layout (``pools.embed/`` beside ``pools.h5``, named from its stem like the shard folder)::

    pools.embed/manifest.json         what is here (replaced atomically: the commit point)
    pools.embed/encoder-<12 hex>.onnx the encoder that made them (rows that join later use it)
    pools.embed/pool-<16 hex>.npy     float16 [rows, D]: pool rows [start, start + rows)
    pools.embed/test-<16 hex>.npy     float16 [rows, D]: test rows

The manifest names the pool id, the encoder (file, SHA-256, dimension, preprocessing) and the
parts of each split in row order, each with its SHA-256. Rows only ever join a pool at its end
and their images never change, so a part is never rewritten: embedding the rows that joined
since (generated images, new images) writes one new part and a new manifest. A crash before the
manifest is replaced leaves the old manifest and a part no manifest names, which the next writer
removes. Writers hold the pool's writer lock; readers take none.

Torch-free (numpy and JSON); the encoder itself runs in :mod:`export.encoder`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core import atomic
from dgaal_core.errors import PoolFormatError
from dgaal_core.pool.findings import Finding, join
from dgaal_core.pool.shards import file_sha256, seal_holds

FORMAT = "dgaal-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
DTYPE = np.dtype(np.float16)  # half the bytes; far below the encoders' own noise
SPLITS = ("pool", "test")


def embed_dir(pool_path: Path) -> Path:
    """Folder holding the embeddings of the pool at ``pool_path``."""
    return pool_path.with_name(pool_path.stem + ".embed")


@dataclass(frozen=True)
class Part:
    """One file of embeddings: rows ``[start, start + rows)`` of a split."""

    name: str
    start: int
    rows: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start, "rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says (see the module docstring)."""

    pool_id: str
    encoder: dict[str, Any]  # file, sha256, name, dim, input (the preprocessing)
    parts: dict[str, tuple[Part, ...]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.encoder["dim"])

    def rows(self, split: str) -> int:
        """Rows of ``split`` embedded so far (always a prefix: rows 0 .. rows-1)."""
        return sum(p.rows for p in self.parts.get(split, ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "pool_id": self.pool_id,
            "dtype": DTYPE.name,
            "encoder": self.encoder,
            "parts": {s: [p.to_dict() for p in self.parts.get(s, ())] for s in SPLITS},
        }

    @classmethod
    def from_dict(cls, path: Path, data: Any) -> Manifest:
        """Parse and check a manifest; :class:`PoolFormatError` naming ``path`` when wrong."""

        def bad(why: str) -> PoolFormatError:
            return PoolFormatError(f"{path}: damaged embeddings manifest: {why}")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad(f"not a {FORMAT} manifest")
        if data.get("version") != VERSION:
            raise bad(f"version {data.get('version')!r}; this dgaal reads version {VERSION}")
        try:
            encoder = dict(data["encoder"])
            if int(encoder["dim"]) < 1 or not str(encoder["file"]) or not encoder["sha256"]:
                raise bad("the encoder entry needs file, sha256 and a dimension >= 1")
            parts: dict[str, tuple[Part, ...]] = {}
            for split in SPLITS:
                got = tuple(
                    Part(str(p["name"]), int(p["start"]), int(p["rows"]), str(p["sha256"]))
                    for p in data["parts"].get(split, [])
                )
                at = 0
                for p in got:
                    if p.start != at or p.rows < 1 or "/" in p.name or p.name.startswith("."):
                        raise bad(f"{split} part {p.name} is out of order or empty")
                    at += p.rows
                parts[split] = got
            return cls(str(data["pool_id"]), encoder, parts)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"missing or malformed entry ({e})") from None


def read_manifest(pool_path: Path) -> Manifest | None:
    """The pool's embeddings manifest, or None when the pool has no embeddings."""
    path = embed_dir(pool_path) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PoolFormatError(f"{path}: unreadable ({e})") from None
    try:
        return Manifest.from_dict(path, json.loads(text))
    except json.JSONDecodeError as e:
        raise PoolFormatError(f"{path}: damaged embeddings manifest: not JSON ({e})") from None


class Embeddings:
    """The embeddings of one pool, read-only: ``pool(ids)`` and ``test()`` as float32.

    Every part is checked (present, its SHA-256, its shape) when first read, so an embedding
    that changed on disk stops its reader with one line instead of steering a round."""

    def __init__(self, pool_path: Path, manifest: Manifest) -> None:
        self.pool_path, self.manifest = Path(pool_path), manifest
        self.dir = embed_dir(self.pool_path)
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def encoder_path(self) -> Path:
        return self.dir / str(self.manifest.encoder["file"])

    def rows(self, split: str = "pool") -> int:
        return self.manifest.rows(split)

    def _load(self, part: Part) -> np.ndarray:
        path = self.dir / part.name
        where = f"{self.pool_path}: damaged embeddings: {path}"
        try:
            if not seal_holds(path, part.sha256):  # hashed once per process
                raise PoolFormatError(
                    f"{where} has changed since it was written (checksum mismatch); run "
                    "`dgaal pool embed` again"
                )
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise PoolFormatError(f"{where} is missing; run `dgaal pool embed` again") from None
        except (OSError, ValueError) as e:
            raise PoolFormatError(f"{where} is unreadable ({e})") from None
        if array.dtype != DTYPE or array.shape != (part.rows, self.dim):
            raise PoolFormatError(
                f"{where} holds {array.dtype} {array.shape}, expected {DTYPE} "
                f"({part.rows}, {self.dim})"
            )
        return array

    def split(self, split: str) -> np.ndarray:
        """Every embedded row of ``split`` as one float32 array [rows, D] (kept for the reader)."""
        if split not in self._arrays:
            parts = [self._load(p) for p in self.manifest.parts.get(split, ())]
            self._arrays[split] = (
                np.concatenate(parts).astype(np.float32)
                if parts
                else np.zeros((0, self.dim), np.float32)
            )
        return self._arrays[split]

    def pool(self, ids: np.ndarray) -> np.ndarray:
        """The embeddings of pool rows ``ids`` [len(ids), D]; a row not embedded yet is an
        error naming the command that embeds it."""
        ids = np.asarray(ids, dtype=np.int64)
        have = self.rows("pool")
        if ids.size and int(ids.max()) >= have:
            raise PoolFormatError(
                f"{self.pool_path}: pool rows {have}..{int(ids.max())} have no embedding yet; "
                "run `dgaal pool embed` (a round embeds the rows that joined before it starts)"
            )
        return self.split("pool")[ids]

    def test(self) -> np.ndarray:
        """The embeddings of every test row [num_test, D]."""
        return self.split("test")


def open_embeddings(pool_path: Path) -> Embeddings | None:
    """The pool's embeddings, or None when it has none."""
    manifest = read_manifest(Path(pool_path))
    return None if manifest is None else Embeddings(Path(pool_path), manifest)


# ---- writing (the caller holds the pool's writer lock) ------------------------------------------
EmbedBatches = Callable[[str, int, int], Iterator[np.ndarray]]


def _write_part(
    folder: Path, split: str, start: int, rows: int, dim: int, batches: Iterator[np.ndarray]
) -> Part:
    """Write the ``rows`` embeddings ``batches`` yields (in row order) as one new part file,
    streamed to disk (memory stays one batch; plain writes, so a full disk is an ``OSError``
    that the atomic writer turns into one line); returns its entry."""
    name = f"{split}-{uuid.uuid4().hex[:16]}.npy"
    atomic.require_space(folder, rows * dim * DTYPE.itemsize + 4096, f"the embeddings {name}")
    with atomic.replacing(folder / name) as tmp, open(tmp, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False,
                  "shape": (rows, dim)}  # fmt: skip
        np.lib.format.write_array_header_1_0(f, header)
        at = 0
        for b in batches:
            b = np.asarray(b)
            if b.ndim != 2 or b.shape[1] != dim or at + b.shape[0] > rows:
                raise PoolFormatError(
                    f"the encoder gave embeddings of shape {list(b.shape)} at row {start + at}; "
                    f"expected [n, {dim}] for {rows} rows in all"
                )
            f.write(np.ascontiguousarray(b, dtype=DTYPE).tobytes())
            at += b.shape[0]
        if at != rows:
            raise PoolFormatError(f"the encoder gave {at} embeddings for {rows} rows")
    return Part(name, start, rows, file_sha256(folder / name))


def unnamed_files(pool_path: Path, manifest: Manifest | None) -> list[str]:
    """Files of the embeddings folder that ``manifest`` does not name (parts and encoders of a
    write that died, or of embeddings since replaced)."""
    folder = embed_dir(pool_path)
    if not folder.is_dir():
        return []
    named = {MANIFEST}
    if manifest is not None:
        named.add(str(manifest.encoder["file"]))
        named.update(p.name for parts in manifest.parts.values() for p in parts)
    return sorted(p.name for p in folder.iterdir() if p.name not in named and p.is_file())


def remove_unnamed(pool_path: Path, manifest: Manifest | None) -> list[str]:
    """Remove the :func:`unnamed_files`; returns the names removed."""
    removed = []
    for name in unnamed_files(pool_path, manifest):
        with contextlib.suppress(OSError):
            (embed_dir(pool_path) / name).unlink()
            removed.append(name)
    return removed


def write_embeddings(
    pool_path: Path,
    pool_id: str,
    rows: dict[str, int],
    embed: EmbedBatches,
    *,
    encoder: dict[str, Any] | None = None,
    encoder_file: Path | None = None,
) -> Manifest:
    """Embed what is missing and commit it: rows ``[embedded, rows[split])`` of each split.

    ``embed(split, start, stop)`` yields float arrays [b, D] for those rows in order. With
    ``encoder`` (its entry without ``file``/``sha256``) and ``encoder_file``, the embeddings start
    over with that encoder (the old ones are removed once the new manifest is in place);
    without, the rows that joined since are embedded with the encoder already recorded. A write
    that fails (a full disk, Ctrl-C, a bad encoder) leaves the embeddings as they were and none
    of its files.
    """
    try:
        return _write_embeddings(
            pool_path, pool_id, rows, embed, encoder=encoder, encoder_file=encoder_file
        )
    except BaseException:  # a full disk, Ctrl-C, a bad encoder: nothing of this write stays
        with contextlib.suppress(OSError, PoolFormatError):
            remove_unnamed(pool_path, read_manifest(pool_path))
            embed_dir(pool_path).rmdir()  # only when nothing else is there
        raise


def _write_embeddings(
    pool_path: Path,
    pool_id: str,
    rows: dict[str, int],
    embed: EmbedBatches,
    *,
    encoder: dict[str, Any] | None = None,
    encoder_file: Path | None = None,
) -> Manifest:
    """:func:`write_embeddings` without the clean-up on failure."""
    pool_path = Path(pool_path)
    folder = embed_dir(pool_path)
    old = read_manifest(pool_path)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise atomic.storage_error(e, folder) or e from None
    remove_unnamed(pool_path, old)  # a write that died before its manifest
    if encoder is not None:
        if encoder_file is None:
            raise ValueError("a new encoder needs its file")
        sha = file_sha256(encoder_file)
        name = f"encoder-{sha[:12]}.onnx"
        if not (folder / name).exists():
            atomic.require_space(folder, encoder_file.stat().st_size, f"the encoder {name}")
            with atomic.replacing(folder / name) as tmp:
                shutil.copyfile(encoder_file, tmp)
        entry = {**encoder, "file": name, "sha256": sha}
        base = Manifest(pool_id, entry, {s: () for s in SPLITS})
    elif old is None:
        raise PoolFormatError(f"{pool_path}: the pool has no embeddings; run `dgaal pool embed`")
    elif old.pool_id != pool_id:
        raise PoolFormatError(
            f"{folder}: embeddings of another pool (id {old.pool_id}, this pool is {pool_id})"
        )
    else:
        base = old
    parts = dict(base.parts)
    changed = encoder is not None
    for split in SPLITS:
        have, want = base.rows(split), int(rows.get(split, 0))
        if want < have:
            raise PoolFormatError(
                f"{folder}: {have} {split} rows embedded but the pool has {want}; "
                "run `dgaal pool embed` again"
            )
        if want > have:
            part = _write_part(folder, split, have, want - have, base.dim, embed(split, have, want))
            parts[split] = (*parts.get(split, ()), part)
            changed = True
    manifest = Manifest(pool_id, base.encoder, parts)
    if changed:
        atomic.write_json(folder / MANIFEST, manifest.to_dict())
        remove_unnamed(pool_path, manifest)  # the replaced encoder's parts
    return manifest


def embeddings_finding(pool_path: Path, pool_id: str, rows: dict[str, int]) -> Finding:
    """The ``embeddings`` row of ``pool check`` for a pool with ``rows`` pool and test rows:
    ok without embeddings, or with embeddings whose files all check out."""
    repair = "run `dgaal pool embed POOL --model ENCODER` again (no label is affected)"
    try:
        manifest = read_manifest(pool_path)
    except PoolFormatError as e:
        return Finding("embeddings", "damaged", str(e), repair=repair)
    if manifest is None:
        return Finding("embeddings", "ok", "none (`dgaal pool embed` makes them)")
    problems = []
    if manifest.pool_id != pool_id:
        problems.append(f"they belong to pool {manifest.pool_id}, not {pool_id}")
    emb = Embeddings(pool_path, manifest)
    enc = emb.encoder_path
    if not enc.is_file():
        problems.append(f"the encoder {enc.name} is missing")
    elif file_sha256(enc) != manifest.encoder["sha256"]:
        problems.append(f"the encoder {enc.name} has changed (checksum mismatch)")
    for split in SPLITS:
        for part in manifest.parts.get(split, ()):
            try:
                emb._load(part)
            except PoolFormatError as e:
                problems.append(str(e).split(": damaged embeddings: ", 1)[-1])
        have, want = manifest.rows(split), int(rows.get(split, 0))
        if have > want:
            problems.append(f"{have} {split} rows embedded, but the pool has {want}")
    if problems:
        return Finding("embeddings", "damaged", join(problems), repair=repair)
    notes = [f"{manifest.dim}-d from {manifest.encoder.get('name') or enc.name}"]
    lag = int(rows.get("pool", 0)) - manifest.rows("pool")
    if lag > 0:
        notes.append(f"{lag} rows that joined since are not embedded yet (the next round does)")
    if left := unnamed_files(pool_path, manifest):
        notes.append(f"{len(left)} left-over files of a write that died (the next writer removes)")
    return Finding("embeddings", "ok", "; ".join(notes))
