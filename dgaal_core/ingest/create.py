"""Data ingestion: make a new pool from an image folder, a keras-style ``.npz`` or sklearn's digits.

A :class:`Source` yields uint8 ``[n, H, W, C]`` batches with their labels; :func:`create_pool`
streams them into a :class:`~dgaal_core.pool.writer.PoolBuilder`, so memory stays bounded by the
batch size (a folder of a million files needs its list of paths, never its images, in RAM).

The labels of the source become the pool's hidden ``truth`` (read only by the simulated oracle);
only the ``initial`` share is revealed. Every problem a user can cause raises
:class:`~dgaal_core.errors.IngestError` (or :class:`~dgaal_core.errors.PoolExistsError`) with one
line naming the file or field, and leaves no pool and no shard behind (the builder discards its
shards when an exception leaves its ``with`` block).

Folder scanning and decoding live in :mod:`dgaal_core.ingest.folder`, the ``.npz`` and digits
checks in :mod:`dgaal_core.ingest.arrays`. Imports numpy, PIL, h5py and (for the digits only,
lazily) scikit-learn; never torch.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import IngestError, PoolExistsError
from dgaal_core.ingest.arrays import digits, read_npz
from dgaal_core.ingest.folder import (
    FileList,
    FolderLayout,
    Probe,
    decode_batches,
    probe,
    scan_folder,
    size_error,
)
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolBuilder
from dgaal_core.values import check_seed, check_size

BATCH_SIZE = 1024
SOURCES = ("folder", "npz", "digits")

# progress(stage, done, total) after every batch; stage is "train" or "test"
ProgressFn = Callable[[str, int, int], None]
Batch = tuple[np.ndarray, np.ndarray | None]


class Source(ABC):
    """Images (uint8 [n, H, W, C]) and labels of a training pool and an optional test split."""

    kind: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    has_labels: bool  # whether the training images come with labels (the pool's truth)

    @abstractmethod
    def train_batches(self, batch_size: int) -> Iterator[Batch]:
        """Yield ``(images, labels or None)`` batches of the training pool, in a fixed order."""

    @abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images, labels)`` batches of the test split (nothing if there is none)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the data came from, for the pool's ``meta`` (JSON-serialisable)."""


# ------------------------------------------------------------------------------------------------
class MemorySource(Source):
    """A source held in memory as arrays (``.npz`` files, the digits)."""

    def __init__(
        self,
        kind: str,
        location: str,
        class_names: Sequence[str],
        x_train: np.ndarray,
        y_train: np.ndarray | None,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ):
        self.kind, self.location = kind, location
        self.class_names = [str(c) for c in class_names]
        self.image_shape = tuple(int(v) for v in x_train.shape[1:])  # type: ignore[assignment]
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.num_train = int(x_train.shape[0])
        self.num_test = 0 if x_test is None else int(x_test.shape[0])
        self.has_labels = y_train is not None

    def train_batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, self.num_train, batch_size):
            y = None if self.y_train is None else self.y_train[i : i + batch_size]
            yield self.x_train[i : i + batch_size], y

    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.x_test is None or self.y_test is None:
            return
        for i in range(0, self.num_test, batch_size):
            yield self.x_test[i : i + batch_size], self.y_test[i : i + batch_size]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.location,
            "train": self.num_train,
            "test": self.num_test,
        }


class FolderSource(Source):
    """Image files decoded on a thread pool, batch by batch (:mod:`dgaal_core.ingest.folder`)."""

    kind = "folder"

    def __init__(self, layout: FolderLayout, ref: Probe, workers: int | None = None):
        self.layout, self.ref, self.workers = layout, ref, workers
        self.class_names = list(layout.class_names)
        self.image_shape = (ref.size[1], ref.size[0], ref.channels)
        self.num_train = len(layout.train.paths)
        self.num_test = 0 if layout.test is None else len(layout.test.paths)
        self.has_labels = layout.train.labels is not None

    def _batches(self, files: FileList, batch_size: int) -> Iterator[Batch]:
        start = 0
        for images in decode_batches(files.paths, self.ref, batch_size, self.workers):
            end = start + images.shape[0]
            yield images, None if files.labels is None else files.labels[start:end]
            start = end

    def train_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._batches(self.layout.train, batch_size)

    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.layout.test is not None:
            for images, labels in self._batches(self.layout.test, batch_size):
                assert labels is not None, "a test split always has class folders"
                yield images, labels

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.layout.root),
            "train": self.num_train,
            "test": self.num_test,
            "channels": self.ref.channels,
        }


# ------------------------------------------------------------------------------------------------
def class_names_from(
    classes: str | None = None, num_classes: int | None = None
) -> list[str] | None:
    """Class names from ``--classes a,b,c`` or ``--num-classes K`` (``"0".."K-1"``), else None."""
    if classes is not None and num_classes is not None:
        raise IngestError("give either --classes or --num-classes, not both")
    if num_classes is not None:
        if num_classes < 1:
            raise IngestError(f"--num-classes must be at least 1, got {num_classes}")
        return [str(i) for i in range(num_classes)]
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")]
    if not names or any(not c for c in names):
        raise IngestError(f"--classes must be comma-separated non-empty names, got {classes!r}")
    if len(set(names)) != len(names):
        raise IngestError(f"--classes has duplicate names: {classes!r}")
    return names


def open_folder(
    root: str | Path,
    test_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    channels: int | None = None,
    workers: int | None = None,
) -> FolderSource:
    """A folder of images as a source: lists the files and probes a few headers (fast)."""
    layout = scan_folder(Path(root), Path(test_dir) if test_dir else None, class_names)
    ref = probe(layout.train.paths, channels)
    if layout.test is not None:  # a test image of another size fails now, not after the pool
        test_ref = probe(layout.test.paths, channels)
        if test_ref.size != ref.size:
            raise size_error(test_ref.first, test_ref.size, ref)
        if test_ref.channels > ref.channels:  # colour test images: an RGB pool
            ref = Probe(ref.size, test_ref.channels, ref.first)
    return FolderSource(layout, ref, workers)


def open_npz(path: str | Path, class_names: Sequence[str] | None = None) -> MemorySource:
    """A keras-style ``.npz`` (``x_train``, ``y_train``, optional ``x_test``, ``y_test``).

    Class names default to ``"0".."K-1"`` with K = largest label + 1. Never loads pickles.
    """
    d = read_npz(Path(path), class_names)
    return MemorySource("npz", str(path), d.class_names, d.x_train, d.y_train, d.x_test, d.y_test)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> MemorySource:
    """scikit-learn's bundled 8x8 digits as uint8 [N, 8, 8, 1], with a stratified test split."""
    d = digits(seed, test_fraction)
    return MemorySource(
        "digits",
        "sklearn.datasets.load_digits",
        d.class_names,
        d.x_train,
        d.y_train,
        d.x_test,
        d.y_test,
    )


def open_source(
    kind: str,
    path: str | Path | None = None,
    *,
    test_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    channels: int | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> Source:
    """Open a source by name (one of :data:`SOURCES`), checking the arguments fit it."""
    if kind not in SOURCES:
        raise IngestError(f"unknown source {kind!r}: expected one of {', '.join(SOURCES)}")
    check_seed(seed, "--seed")
    if kind == "digits":
        if path is not None or test_dir is not None or class_names is not None:
            raise IngestError(
                "--from digits takes no SOURCE, --test-dir, --classes or --num-classes"
            )
        return load_digits(seed)
    if path is None:
        raise IngestError(f"--from {kind} needs a SOURCE path")
    if kind == "npz":
        if test_dir is not None or channels is not None:
            raise IngestError("--test-dir and --channels apply to --from folder only")
        return open_npz(path, class_names)
    return open_folder(path, test_dir, class_names, channels, workers)


# ------------------------------------------------------------------------------------------------
def _check_initial(initial: float | None, n: int, truth: bool) -> float:
    """The ``--initial`` value to use: a fraction < 1 or a whole count, checked against ``n``."""
    if initial is None:
        return 0.1 if truth else 0.0
    initial = check_size(initial, "--initial", zero_ok=True, error=IngestError)
    if initial and not truth:
        raise IngestError(
            f"--initial {initial:g} needs labelled source data, but the pool has no ground truth "
            "(unlabelled source or --no-truth); use --initial 0"
        )
    if initial >= 1 and initial > n:
        raise IngestError(f"--initial {int(initial)} is more than the {n} images in the pool")
    return float(initial)


@dataclass(frozen=True)
class IngestResult:
    """What :func:`create_pool` made."""

    path: Path
    images: int
    labelled: int
    test: int
    image_shape: tuple[int, int, int]
    class_names: list[str]
    seconds: float


def create_pool(
    out: str | Path,
    source: Source,
    *,
    initial: float | None = None,
    stratified: bool = True,
    seed: int = 0,
    keep_truth: bool = True,
    force: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: ProgressFn | None = None,
) -> IngestResult:
    """Stream ``source`` into a new pool at ``out`` and reveal the initial labelled set.

    ``initial``: fraction (< 1) or count (>= 1) of images whose labels are revealed; default 0.1
    when the pool keeps ground truth, else 0. ``stratified`` takes the same share per class.
    ``keep_truth=False`` stores no hidden truth (real unlabelled data). Nothing appears at ``out``
    unless every image was read; an existing ``out`` is replaced only with ``force``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise IngestError(f"{out} is a folder; give the pool file to create, e.g. {out}/pools.h5")
    if out.exists() and not force:
        raise PoolExistsError(f"{out} already exists; pass --force to replace it")
    if batch_size < 1:
        raise IngestError(f"batch size must be at least 1, got {batch_size}")
    check_seed(seed, "--seed")
    truth = keep_truth and source.has_labels
    initial = _check_initial(initial, source.num_train, truth)
    report = progress or (lambda stage, done, total: None)
    meta = {
        "source": source.describe(),
        "ingest": {"initial": initial, "stratified": stratified, "seed": seed, "truth": truth},
    }
    with PoolBuilder(out, source.image_shape, source.class_names, force=force) as b:
        done = 0
        for images, labels in source.train_batches(batch_size):
            b.add(images, labels if truth else None)
            done += images.shape[0]
            report("train", done, source.num_train)
        done = 0
        for images, labels in source.test_batches(batch_size):
            b.add_test(images, labels)
            done += images.shape[0]
            report("test", done, source.num_test)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        chosen = None
        if initial and b.truth is not None:
            chosen = choose_initial(b.truth, initial, rng, stratified)
        b.finish(labelled=chosen, meta=meta)
    with PoolReader(out) as r:
        labelled = int(r.ids(State.LABELLED).size)
    return IngestResult(
        out,
        source.num_train,
        labelled,
        source.num_test,
        source.image_shape,
        list(source.class_names),
        time.perf_counter() - t0,
    )
