"""Array sources: keras-style ``.npz`` files and scikit-learn's bundled digits, checked.

Every check names the file and the array (``x_train``, ``y_test``, ...) and says what was
expected, as one line of :class:`~dgaal_core.errors.IngestError`. Never loads pickles; imports
scikit-learn only when the digits are asked for (it is slow to import).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgaal_core.errors import IngestError


@dataclass(frozen=True)
class ArrayData:
    """Checked arrays: images uint8 [N, H, W, C], labels int64 [N] (None when unlabelled)."""

    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _npz_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``x`` as uint8 [N, H, W, C] with C in (1, 3), or one clear error."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = (
            " (channels first? use x.transpose(0, 2, 3, 1))"
            if x.ndim == 4 and x.shape[1] in (1, 3)
            else ""
        )
        raise IngestError(
            f"{path}: {key} must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}{hint}"
        )
    if x.shape[0] == 0:
        raise IngestError(f"{path}: {key} holds no images")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise IngestError(
            f"{path}: {key} images must be at least 1x1 pixels, got {x.shape[1]}x{x.shape[2]}"
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if 0 <= lo and hi <= 255:
            return x.astype(np.uint8)
        raise IngestError(f"{path}: {key} pixel values must lie in 0..255, found {lo}..{hi}")
    raise IngestError(
        f"{path}: {key} must hold uint8 pixels (or integers in 0..255), got {x.dtype}; "
        "convert floats first, e.g. (x * 255).round().astype('uint8') for values in [0, 1]"
    )


# labels imply "0".."K-1" as class names only up to this K (a label of 1e9 is a wrong column)
MAX_IMPLIED_CLASSES = 100_000


def _npz_labels(y: np.ndarray, key: str, path: Path, n: int, xkey: str) -> np.ndarray:
    """``y`` as int64 [N] (from (N,) or (N, 1)), non-negative and whole, or one clear error."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise IngestError(f"{path}: {key} must have shape (N,) or (N, 1), got {y.shape}")
    if y.shape[0] != n:
        raise IngestError(f"{path}: {key} has {y.shape[0]} labels but {xkey} has {n} images")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise IngestError(f"{path}: {key} must hold integer class labels, got {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise IngestError(f"{path}: {key} labels must be >= 0, found {y[i]} at index {i}")
    return y


def _check_range(y: np.ndarray | None, key: str, path: Path, k: int) -> None:
    if y is not None and y.size and y.max() >= k:
        i = int(np.argmax(y >= k))
        raise IngestError(
            f"{path}: {key} label {y[i]} at index {i} is out of range for {k} classes "
            f"(--classes/--num-classes give {k} names)"
        )


def read_npz(path: Path, class_names: Sequence[str] | None = None) -> ArrayData:
    """A keras-style ``.npz`` (``x_train``, ``y_train``, optional ``x_test``, ``y_test``).

    Class names default to ``"0".."K-1"`` with K = largest label + 1. Never loads pickles.
    """
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise IngestError(f"{path}: not a readable .npz archive without pickles ({e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy file: one array
        raise IngestError(
            f"{path}: expected an .npz archive with x_train and y_train, found a single .npy array"
        )
    try:
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        # object arrays (pickles), truncated or corrupt members
        raise IngestError(f"{path}: not a readable .npz archive without pickles ({e})") from None
    if "x_train" not in arrays:
        raise IngestError(f"{path}: no array 'x_train' (found {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise IngestError(f"{path}: x_test and y_test must come together (found {sorted(arrays)})")
    x = _npz_images(arrays["x_train"], "x_train", path)
    y = arrays.get("y_train")
    y = None if y is None else _npz_labels(y, "y_train", path, x.shape[0], "x_train")
    xt = yt = None
    if "x_test" in arrays:
        xt = _npz_images(arrays["x_test"], "x_test", path)
        yt = _npz_labels(arrays["y_test"], "y_test", path, xt.shape[0], "x_test")
        if xt.shape[1:] != x.shape[1:]:
            raise IngestError(
                f"{path}: x_test images are {xt.shape[1:]} but x_train images are {x.shape[1:]}"
            )
    if class_names is None:
        if y is None:
            raise IngestError(
                f"{path}: no y_train, so the images are unlabelled: "
                "give the class names with --classes a,b,c or --num-classes K"
            )
        k = int(max(y.max(), -1 if yt is None else yt.max())) + 1
        if k > MAX_IMPLIED_CLASSES:
            raise IngestError(
                f"{path}: labels up to {k - 1} would mean {k} classes; give the class names "
                "with --classes a,b,c or --num-classes K (labels are indices into them)"
            )
        class_names = [str(i) for i in range(k)]
    _check_range(y, "y_train", path, len(class_names))
    _check_range(yt, "y_test", path, len(class_names))
    return ArrayData(list(class_names), x, y, xt, yt)


def digits(seed: int = 0, test_fraction: float = 0.2) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (no network): 0..16 scaled to uint8 [N, 8, 8, 1].

    A stratified, seeded ``test_fraction`` of every class is held out as the test split.
    """
    from sklearn.datasets import load_digits as sk_digits  # slow import: only when asked for

    bunch = sk_digits()
    x = np.round(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    x = x[..., None]  # (N, 8, 8, 1)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    test = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        ids = np.flatnonzero(y == c)
        test[rng.permutation(ids)[: round(test_fraction * ids.size)]] = True
    names = [str(i) for i in range(10)]
    return ArrayData(names, x[~test], y[~test], x[test], y[test])
