"""Data sets for the learning-quality benchmarks: the built-in digits and a CIFAR-10 subset.

Each comes with two evaluation splits:

- ``"test"``: the data set's own test split, for the numbers we report;
- ``"val"``: a validation split carved from the *training* images only, for choosing settings.
  Nothing is ever chosen on the test split.

The CIFAR-10 subset is read from ``../shared/data/cifar10-jpeg.tar.gz`` (JPEGs in an ImageFolder
layout), unpacked once into a cache folder; it is never needed by the tests.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from dgaal_core.ingest.create import MemorySource, create_pool

ROOT = Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SPLITS = ("test", "val")


def _stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class of ``y``, drawn without replacement, ascending."""
    picks = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def digits_source(split: str = "test") -> MemorySource:
    """The built-in digits (1,438 training, 359 test images); with ``split="val"`` a stratified
    20% of the training images (287) stands in for the test split and is removed from training."""
    from dgaal_core.ingest.arrays import digits

    d = digits(seed=0)
    assert d.y_train is not None
    if split == "test":
        return MemorySource(
            "digits", "digits", d.class_names, d.x_train, d.y_train, d.x_test, d.y_test
        )
    rng = np.random.default_rng(np.random.SeedSequence([0, 2]))
    val = np.zeros(d.y_train.size, dtype=bool)
    for c in np.unique(d.y_train):
        ids = np.flatnonzero(d.y_train == c)
        val[rng.permutation(ids)[: round(0.2 * ids.size)]] = True
    return MemorySource(
        "digits-val",
        "digits (validation split)",
        d.class_names,
        d.x_train[~val],
        d.y_train[~val],
        d.x_train[val],
        d.y_train[val],
    )


def _unpack_cifar(cache: Path) -> Path:
    root = cache / "cifar10"
    if not (root / "train").is_dir():
        if not CIFAR_TAR.exists():
            raise SystemExit(f"{CIFAR_TAR}: not found (the CIFAR-10 JPEGs for benchmarks)")
        cache.mkdir(parents=True, exist_ok=True)
        # unpacked beside the cache and renamed into place: an interrupted unpack is not a cache
        partial = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=cache))
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(partial, filter="data")  # train/<class>/*.jpg, test/<class>/*.jpg
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


def _read_jpegs(files: list[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def cifar_subset_source(
    cache: Path, split: str = "test", n_train: int = 10_000, n_eval: int = 5_000
) -> MemorySource:
    """A class-balanced ``n_train``-image subset of CIFAR-10's training JPEGs (seeded, fixed), and
    ``n_eval`` evaluation images: from CIFAR-10's test split (``"test"``) or from training images
    outside the subset (``"val"``)."""
    npz = cache / f"cifar{n_train}-{split}{n_eval}.npz"
    if not npz.exists():
        root = _unpack_cifar(cache)
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

        def listing(part: str) -> tuple[list[Path], np.ndarray]:
            files, labels = [], []
            for k, c in enumerate(classes):
                names = sorted((root / part / c).iterdir())
                files += names
                labels += [k] * len(names)
            return files, np.asarray(labels, dtype=np.int64)

        files, y = listing("train")
        rng = np.random.default_rng(np.random.SeedSequence([0, 3]))
        train = _stratified(y, n_train // len(classes), rng)
        if split == "val":
            rest = np.setdiff1d(np.arange(y.size), train)
            ev = rest[_stratified(y[rest], n_eval // len(classes), rng)]
            ev_files, ev_y = [files[i] for i in ev], y[ev]
        else:
            t_files, t_y = listing("test")
            ev = _stratified(t_y, n_eval // len(classes), rng)
            ev_files, ev_y = [t_files[i] for i in ev], t_y[ev]
        np.savez(
            npz,
            x_train=_read_jpegs([files[i] for i in train]),
            y_train=y[train],
            x_test=_read_jpegs(ev_files),
            y_test=ev_y,
            classes=np.asarray(classes),
        )
    with np.load(npz, allow_pickle=False) as z:
        return MemorySource(
            f"cifar{n_train}-{split}",
            str(npz),
            [str(c) for c in z["classes"]],
            z["x_train"],
            z["y_train"],
            z["x_test"],
            z["y_test"],
        )


def source_for(name: str, split: str, cache: Path) -> MemorySource:
    """``"digits"``, ``"cifar"`` (the 10,000-image subset) or ``"cifar-full"`` (all 50,000), with
    the ``split`` to evaluate on."""
    if split not in SPLITS:
        raise SystemExit(f"--split: expected one of {SPLITS}, got {split!r}")
    if name == "digits":
        return digits_source(split)
    if name == "cifar":
        return cifar_subset_source(cache, split)
    if name == "cifar-full":  # all 50,000 training images; the test split's 10,000
        return cifar_subset_source(cache, split, n_train=50_000, n_eval=10_000)
    raise SystemExit(f"--data: expected digits, cifar or cifar-full, got {name!r}")


def make_pool(path: Path, source: MemorySource, initial: float = 0.1) -> Path:
    """A pool at ``path`` from ``source`` (the initial set is redrawn per run by experiments)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_pool(path, source, initial=initial, seed=0)
    return path
