"""``dgaal pool check``: verify a pool's index against its shards, its rows and its round log.

Reads the index with h5py directly, not through :class:`~dgaal_core.pool.PoolReader`, so that
garbage in one attribute is one finding instead of the end of the check. numpy + h5py only (no
torch): the command starts fast. The row checks live in :mod:`dgaal_core.pool.check_rows`.

:func:`check_pool` only reads; :func:`repair_pool` removes this pool's orphan files and abandons
a broken round that waits for answers (both through the writer, under the lock), and never
touches a committed label.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dgaal_core.atomic import TMP_MARK
from dgaal_core.errors import DgaalError, PoolFormatError
from dgaal_core.pool.backup import index_seals
from dgaal_core.pool.check_backup import (
    REBUILD,
    backup_finding,
    crashes_hdf5,
    rebuild_index,
    rewrite_backup,
    unopenable,
)
from dgaal_core.pool.check_rows import RowChecks
from dgaal_core.pool.embeddings import embeddings_finding
from dgaal_core.pool.findings import CHECKS, Finding, join
from dgaal_core.pool.index import siblings
from dgaal_core.pool.lock import dead_create, holder
from dgaal_core.pool.reader import check_index_seal
from dgaal_core.pool.schema import (
    FORMAT,
    IMAGES,
    ROW_FIELDS,
    VERSION,
    owns_shard,
    shard_dir,
)
from dgaal_core.pool.shards import file_sha256

READ_ROWS = 4096  # rows per read when a shard without a checksum is read through
# what the index holds (and its backup can give back): not the shards, not the orphans
INDEX_CHECKS = ("attributes", "row fields", "labels", "lineage", "depth", "rounds", "pending round")


def _json(raw: Any) -> Any:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        raise TypeError(f"expected a JSON string, got {type(raw).__name__}")
    return json.loads(raw)


class _Checker(RowChecks):
    """Runs the checks in :data:`CHECKS` order; each may use what the earlier ones parsed."""

    def __init__(self, path: Path, f: h5py.File):
        self.path, self.f = path, f
        self.findings: list[Finding] = []
        self.shape: tuple[int, int, int] | None = None
        self.k: int | None = None
        self.pool_id: str | None = None
        self.meta: dict[str, Any] | None = None
        self.shards: dict[str, list[tuple[str, int]]] | None = None
        self.sums: dict[str, str] = {}
        self.fields: dict[str, np.ndarray] | None = None
        self.test_labels: np.ndarray | None = None
        self.rounds: list[dict[str, Any]] | None = None
        self.generation: int | None = None

    def add(self, check: str, problems: list[str], ok: str, **repair: Any) -> None:
        if problems:
            self.findings.append(Finding(check, "damaged", join(problems), **repair))
        else:
            self.findings.append(Finding(check, "ok", ok))

    def skip(self, check: str, why: str) -> None:
        self.findings.append(Finding(check, "skipped", why))

    # ---- attributes ---------------------------------------------------------------------------
    def attributes(self) -> None:
        a, bad = self.f.attrs, []
        if a.get("format") != FORMAT:
            bad.append(f"format is {a.get('format')!r}, expected {FORMAT!r}")
        try:
            version = int(a["version"])
        except (KeyError, ValueError, TypeError):
            bad.append(f"version is {a.get('version')!r}, expected {VERSION}")
        else:
            if version != VERSION:
                raise PoolFormatError(
                    f"{self.path}: pool format version {version}, this dgaal checks version "
                    f"{VERSION}"
                )
        try:
            shape = tuple(int(v) for v in np.asarray(a["image_shape"]).ravel())
            if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
                raise ValueError(shape)
            self.shape = shape
        except (KeyError, ValueError, TypeError):
            bad.append(f"image_shape is {a.get('image_shape')!r}, expected H, W, 1|3")
        try:
            names = _json(a["class_names"])
            if not isinstance(names, list) or not names or int(a["num_classes"]) != len(names):
                raise ValueError(names)
            self.k = len(names)
        except (KeyError, ValueError, TypeError):
            bad.append("class_names / num_classes do not parse or disagree")
        try:
            self.generation = int(a["generation"])
        except (KeyError, ValueError, TypeError):
            bad.append(f"generation is {a.get('generation')!r}, expected an integer")
        if "pool_id" in a:
            pid = a["pool_id"]
            if isinstance(pid, str) and re.fullmatch(r"[0-9a-f]{16}", pid):
                self.pool_id = pid
            else:
                bad.append(f"pool_id is {pid!r}, expected 16 hex digits")
        try:
            meta = _json(a.get("meta", "{}"))
            if not isinstance(meta, dict):
                raise ValueError(meta)
            self.meta = meta
        except (ValueError, TypeError):
            bad.append("meta is not a JSON object")
        shards: dict[str, list[tuple[str, int]]] = {}
        for key in ("pool_shards", "test_shards"):
            try:
                entries = _json(a.get(key, "[]"))
                shards[key] = [(str(n), int(r)) for n, r in entries]
                if any("/" in n or r < 0 for n, r in shards[key]):
                    raise ValueError(entries)
            except (ValueError, TypeError):
                bad.append(f"{key} is not a JSON list of [shard file name, rows]")
        if len(shards) == 2:
            self.shards = shards
        try:
            sums = _json(a.get("shard_sha256", "{}"))
            if not isinstance(sums, dict) or not all(
                isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in sums.values()
            ):
                raise ValueError(sums)
            self.sums = sums
        except (ValueError, TypeError):
            bad.append("shard_sha256 is not a JSON object of SHA-256 digests")
        ok = f"format {FORMAT} v{VERSION}, pool id {self.pool_id or 'none (an older pool)'}"
        self.add("attributes", bad, ok)

    # ---- row fields ---------------------------------------------------------------------------
    def row_fields(self) -> None:
        bad, fields = [], {}
        for name in ROW_FIELDS:
            try:
                arr = self.f["pool"][name][()]
            except (KeyError, OSError, TypeError) as e:
                bad.append(f"pool/{name} is missing or unreadable ({e})")
                continue
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                bad.append(f"pool/{name} is {arr.dtype} {list(arr.shape)}, expected integers [N]")
                continue
            fields[name] = arr.astype(np.int64)
        sizes = {v.size for v in fields.values()}
        if len(sizes) > 1:
            bad.append(f"the row fields have different lengths {sorted(sizes)}")
        n = sizes.pop() if len(sizes) == 1 else None
        if self.shards is not None and n is not None:
            rows = sum(r for _, r in self.shards["pool_shards"])
            if rows != n:
                bad.append(f"the rows are {n} but pool_shards name {rows} images")
        if "pool" in self.f and "truth" in self.f["pool"] and n is not None:
            if self.f["pool/truth"].shape != (n,):
                bad.append(f"pool/truth has shape {self.f['pool/truth'].shape}, expected ({n},)")
        try:
            test = self.f["test/label"][()] if "test" in self.f else np.zeros(0, np.int64)
            self.test_labels = np.asarray(test, dtype=np.int64)
            if self.shards is not None:
                rows = sum(r for _, r in self.shards["test_shards"])
                if test.shape != (rows,):
                    bad.append(f"test/label has {test.shape[0]} rows, test_shards {rows}")
        except (KeyError, OSError, TypeError) as e:
            bad.append(f"test/label is unreadable ({e})")
        try:
            self.rounds = [_json(s) for s in self.f["log/rounds"].asstr()[()]]
        except (KeyError, OSError, TypeError, ValueError) as e:
            bad.append(f"log/rounds is missing or not JSON ({e})")
        if not bad:
            self.fields = fields
        self.add("row fields", bad, f"{n} rows, {len(self.rounds or [])} rounds logged")

    # ---- shards -------------------------------------------------------------------------------
    def _shard_problem(self, name: str, rows: int) -> str | None:
        p = shard_dir(self.path) / name
        if not p.is_file():
            return f"{name} is missing"
        if name in self.sums and file_sha256(p) != self.sums[name]:
            return f"{name} has changed since it was written (checksum mismatch)"
        try:
            with h5py.File(p, "r", locking=False) as s:
                ds = s[IMAGES]
                want = (rows, *self.shape) if self.shape else None
                if want and (ds.shape != want or ds.dtype != np.uint8):
                    return f"{name} holds {ds.dtype} {list(ds.shape)}, expected uint8 {list(want)}"
                if name not in self.sums:  # no seal to compare with: read it all through
                    for lo in range(0, rows, READ_ROWS):
                        ds[lo : lo + READ_ROWS]
        except (OSError, KeyError, ValueError) as e:
            return f"{name} is unreadable ({' '.join(str(e).split())})"
        return None

    def shards_present(self) -> None:
        if self.shards is None:
            return self.skip("shards", "the shard lists do not parse")
        names = self.shards["pool_shards"] + self.shards["test_shards"]
        bad = [m for n, r in names if (m := self._shard_problem(n, r))]
        sealed = sum(n in self.sums for n, _ in names)
        how = (
            f"{sealed} by checksum" if sealed == len(names) else f"{sealed} by checksum, rest read"
        )
        why = "the images are gone or changed: restore the shard files from a backup"
        self.add("shards", bad, f"{len(names)} shard files intact ({how})", repair=why)

    # ---- orphans -------------------------------------------------------------------------------
    def orphans(self) -> None:
        if self.shards is None or self.pool_id is None:
            why = "the shard lists do not parse" if self.shards is None else "the pool has no id"
            return self.skip("orphans", f"{why}: whose shards are whose cannot be told")
        if (who := holder(self.path)) is not None:
            return self.skip("orphans", f"the pool is being written by {who}")
        near = siblings(self.path)
        twins = [str(s.path) for s in near if s.pool_id == self.pool_id]
        if twins:
            return self.add(
                "orphans",
                [f"{twins[0]} is a copy of this pool (same pool id) sharing its shard folder"],
                "",
                repair="delete one of the two, or move one to another folder with a copy of the "
                "shard folder; writers refuse both until then",
            )
        keep = {n for n, _ in self.shards["pool_shards"] + self.shards["test_shards"]}
        keep = keep.union(*(s.shards for s in near))  # a neighbour's shards are never orphans
        folder = shard_dir(self.path)
        files = sorted(p.name for p in folder.glob("*.h5")) if folder.is_dir() else []
        ours = [n for n in files if n not in keep and owns_shard(self.pool_id, n)]
        dead = dead_create(self.path)  # a `pool create` of this file killed before publishing
        if dead and dead != self.pool_id:
            ours += [n for n in files if owns_shard(dead, n)]
        temps = sorted(p.name for p in self.path.parent.glob(f"{self.path.name}{TMP_MARK}*"))
        others = sum(1 for n in files if n not in keep and n not in ours)
        bad = [f"orphan shard {n}" for n in ours]
        note = f" ({others} files of other pools left alone)" if others else ""
        if temps:  # a write that died: harmless, the next writer (or --repair) removes them
            note += f"; {len(temps)} left-over temporary files ({', '.join(temps[:3])})"
        self.add(
            "orphans",
            bad,
            f"no orphan files{note}",
            repair=f"remove {len(bad) + len(temps)} orphan files of this pool{note}",
            repairable=True,
        )

    def run(self) -> list[Finding]:
        for step in (
            self.attributes,
            self.row_fields,
            self.shards_present,
            self.orphans,
            self.labels,
            self.lineage,
            self.depth,
            self.round_log,
            self.pending,
            self.backup,
            self.embeddings,
        ):
            before = len(self.findings)
            try:
                step()
            except (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError) as e:
                # garbage the parsing above let through (e.g. a record's field of the wrong type)
                del self.findings[before:]
                name = CHECKS[len(self.findings)]
                self.findings.append(Finding(name, "damaged", f"does not parse ({e})"))
        return self.findings

    def embeddings(self) -> None:
        if self.fields is None or self.pool_id is None:
            self.skip("embeddings", "the row fields or the pool id did not parse")
            return
        tests = 0 if self.test_labels is None else int(self.test_labels.size)
        rows = {"pool": len(next(iter(self.fields.values()))), "test": tests}
        self.findings.append(embeddings_finding(self.path, self.pool_id, rows))

    def backup(self) -> None:
        index_damaged = any(fd.damaged for fd in self.findings if fd.check in INDEX_CHECKS)
        found = backup_finding(
            self.path, index_damaged, self.generation, self.fields, self.rounds, self.meta
        )
        if found.status == "ok" and "rebuild" in found.detail:  # the index is what is damaged
            self.findings[:] = [
                dataclasses.replace(fd, repair=REBUILD, repairable=True)
                if fd.damaged and fd.check in INDEX_CHECKS
                else fd
                for fd in self.findings
            ]
        self.findings.append(found)


def check_pool(path: str | Path) -> list[Finding]:
    """Check the pool at ``path``; one :class:`Finding` per name in :data:`CHECKS`, in order.

    Raises :class:`PoolFormatError` when there is no pool to check (no file, not HDF5, not a
    dgaal pool at all, or a format version this dgaal does not know).
    """
    path = Path(path)
    if not path.is_file():
        raise PoolFormatError(f"{path}: no such pool file")
    if index_seals(path) is None and (crash := crashes_hdf5(path)):  # no seal to trust
        return [Finding("attributes", "damaged", crash, repair="restore the index from a copy")] + [
            Finding(c, "skipped", "the index crashes HDF5") for c in CHECKS[1:]
        ]
    try:
        check_index_seal(path)
        f = h5py.File(path, "r", locking=False)
    except (OSError, RuntimeError, PoolFormatError) as e:
        found = unopenable(path, " ".join(str(e).split()))
        if found is None:
            raise PoolFormatError(f"{path}: not an HDF5 file ({e})") from None
        return found
    with f:
        try:
            if "format" not in f.attrs and "pool" not in f:
                raise PoolFormatError(f"{path}: not a dgaal pool (no format attribute, no pool/)")
        except (OSError, RuntimeError) as e:  # too damaged to tell
            found = unopenable(path, " ".join(str(e).split()))
            if found is None:
                raise PoolFormatError(f"{path}: damaged beyond reading ({e})") from None
            return found
        return _Checker(path, f).run()


def repair_pool(path: str | Path, findings: list[Finding]) -> tuple[list[str], list[str]]:
    """Repair what can be repaired without losing committed work.

    Removes this pool's orphan shards and left-over index files, and abandons a broken round
    that waits for answers (see :mod:`dgaal_core.loop.abandon`). Returns ``(done, not_done)``: one
    line per action taken, and one per damage left with the reason.
    """
    from dgaal_core.loop.abandon import abandon_round  # the writer side, only when repairing
    from dgaal_core.pool.writer import PoolWriter

    path = Path(path)
    done: list[str] = []
    left: list[str] = []
    if any(fd.damaged and fd.repair.startswith(REBUILD) for fd in findings):
        try:  # first the index, then what a check of the rebuilt one still finds
            done.append(rebuild_index(path))
        except DgaalError as e:
            return done, [f"index: {e}"]
        findings = check_pool(path)
    for fd in findings:
        if not fd.damaged:
            continue
        if not fd.repairable:
            left.append(f"{fd.check}: {fd.repair or 'no automatic repair'}")
            continue
        try:
            if fd.check == "backup":
                done.append(rewrite_backup(path))
            elif fd.check == "orphans":
                with PoolWriter(path, purpose="dgaal pool check --repair") as w:
                    gone = [p.name for p in w.orphans_removed]
                done.append(f"removed {len(gone)} orphan files: {', '.join(gone)}")
            elif fd.check == "pending round":
                out = abandon_round(path)
                done.append(
                    f"abandoned round {out.round}: {out.requeued} queried images are "
                    "candidates again, committed labels untouched"
                )
        except DgaalError as e:
            left.append(f"{fd.check}: {e}")
    return done, left
