"""Image folders as a pool source: layout detection, a cheap probe, and threaded, ordered decoding.

Layouts (``DIR`` is the folder given to ``dgaal pool create --from folder DIR``):

- ``DIR/<class>/**/*.png`` (ImageFolder): class names are the sorted subfolder names;
  ``DIR/test/<class>/...`` (a ``test`` folder that itself has subfolders) is the test split.
- ``DIR/train/<class>/...`` and optionally ``DIR/test/<class>/...`` (the CIFAR-10 JPEG layout).
- ``DIR/*.png`` with no subfolders: unlabelled images; class names must be given.

Only file names ending in ``.png .jpg .jpeg .bmp .webp`` (any case) are read; hidden files and
folders (``.name``) are skipped. Symlinked folders are followed, each folder once; a link to
a folder above it (a loop) is skipped, and an entry that cannot be read (a link to itself) is an
error naming it. Pixels are taken as stored (EXIF orientation is not applied).
Channels: 1 if every probed image is grayscale (L, LA, 1, I;16...), else 3 (RGB; RGBA, P, CMYK
are converted); ``--channels`` forces either, converting every image to it. Imports numpy
and PIL only, never torch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dgaal_core.errors import IngestError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
FilePath = str | Path
PROBE_FILES = 32  # images whose headers decide the channel count and catch mixed sizes early


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(
            (Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")),
            key=lambda p: p.name,
        )


def _loops_back(entry: os.DirEntry, parent: Path) -> bool:
    """Whether ``entry`` is a symlink to ``parent`` or a folder above it (a loop, not images)."""
    if not entry.is_symlink():
        return False
    target, here = os.path.realpath(entry.path), os.path.realpath(parent)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _images_in(folder: Path, recursive: bool) -> list[str]:
    """Image files in ``folder`` (and below when ``recursive``), sorted by path.

    Plain strings, not ``Path`` objects: about 100 instead of 230 bytes per file, which matters
    for folders of millions of files.
    """
    found: list[str] = []
    stack = [folder]
    seen: set[tuple[int, int]] = set()  # folders visited: a symlink loop is walked once
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        if recursive and not _loops_back(e, d):
                            stack.append(Path(e.path))
                    elif _is_image(e.name):
                        found.append(e.path)
        except OSError as e:  # a symlink to itself, a folder we may not read, ...
            raise IngestError(f"{e.filename or d}: cannot be read ({e.strerror})") from None
    found.sort()
    return found


@dataclass(frozen=True)
class FileList:
    """Image files of one split and their class indices (``labels`` is None when unlabelled)."""

    paths: list[str]
    labels: np.ndarray | None


def _class_folders(
    root: Path, class_names: Sequence[str], what: str, skip: frozenset[str] = frozenset()
) -> FileList:
    """Files of ``root/<class>/**`` for the given classes (exactly its subfolders but ``skip``)."""
    found = [p.name for p in _subdirs(root) if p.name not in skip]
    if sorted(found) != sorted(class_names):
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise IngestError(
            f"{root}: {what} class folders {found} do not match the classes {list(class_names)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    paths: list[str] = []
    labels: list[np.ndarray] = []
    for index, name in enumerate(class_names):
        files = _images_in(root / name, recursive=True)
        if not files:
            raise IngestError(f"{root / name}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels.append(np.full(len(files), index, dtype=np.int64))
    return FileList(paths, np.concatenate(labels))


@dataclass(frozen=True)
class FolderLayout:
    """The train (and optional test) files found under a folder, with the class names."""

    root: Path
    class_names: list[str]
    train: FileList
    test: FileList | None


def _has_subdirs(folder: Path) -> bool:
    return folder.is_dir() and bool(_subdirs(folder))


def scan_folder(
    root: Path, test_dir: Path | None = None, class_names: Sequence[str] | None = None
) -> FolderLayout:
    """Find the images under ``root`` (see the module docstring for the layouts).

    ``class_names`` orders the classes of a labelled folder (it must name exactly its class
    folders) and is required for a flat folder of unlabelled images.
    """
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder")
    if test_dir is not None and not test_dir.is_dir():
        raise IngestError(f"{test_dir}: no such folder (--test-dir)")
    subdirs = {p.name for p in _subdirs(root)}
    train_root, skip = root, frozenset[str]()
    if subdirs and subdirs <= {"train", "test"} and "train" in subdirs:
        train_root = root / "train"
        test_root = test_dir or (root / "test" if "test" in subdirs else None)
        classes_here = [p.name for p in _subdirs(train_root)]
    else:
        auto_test = root / "test" if _has_subdirs(root / "test") else None
        test_root = test_dir or auto_test
        skip = frozenset({"test"} if auto_test is not None else ())
        classes_here = sorted(subdirs - skip)
    loose = _images_in(train_root, recursive=False)
    if not classes_here:  # a flat folder: unlabelled images
        if not loose:
            raise IngestError(
                f"{train_root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        if not class_names:
            raise IngestError(
                f"{train_root} holds unlabelled images (no class folders): "
                "give the class names with --classes a,b,c or --num-classes K"
            )
        names = list(class_names)
        train = FileList(loose, None)
    else:
        if loose:
            raise IngestError(
                f"{train_root}: holds both class folders and {len(loose)} loose images "
                f"(e.g. {Path(loose[0]).name}); move the loose images into a class folder or away"
            )
        names = list(class_names) if class_names else classes_here
        train = _class_folders(train_root, names, "train", skip)
    test = _class_folders(test_root, names, "test") if test_root is not None else None
    return FolderLayout(root, names, train, test)


# ------------------------------------------------------------------------------------------------
def _gray_array(im: Image.Image) -> np.ndarray:
    """A grayscale-mode image as uint8 [H, W]; 16-bit data keeps its top 8 bits."""
    if im.mode.startswith("I"):
        a = np.asarray(im)
        if a.size and (a.max() > 255 or im.mode.startswith("I;16")):
            return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    return np.asarray(im if im.mode == "L" else im.convert("L"))


def to_array(
    im: Image.Image, channels: int, path: FilePath, *, convert: bool = False
) -> np.ndarray:
    """Decode ``im`` to uint8 [H, W, channels] in the pool's colour mode.

    A grayscale image in a colour pool is replicated to RGB; a colour image in a grayscale pool
    is converted to luminance when ``convert`` (``--channels 1`` asked for it), else accepted
    only if its channels are equal (gray content saved as RGB).
    """
    if im.mode in GRAY_MODES:
        gray = _gray_array(im)
        return gray[:, :, None] if channels == 1 else np.repeat(gray[:, :, None], 3, axis=2)
    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    if channels == 3:
        return rgb
    if convert:  # ITU-R 601 luma, as Pillow's "L" mode
        return np.asarray(Image.fromarray(rgb).convert("L"))[:, :, None]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise IngestError(
            f"{path}: colour image ({im.mode}) in a grayscale pool (1 channel, decided by the "
            "first images); pass --channels 3 to keep colour or --channels 1 to convert it"
        )
    return rgb[:, :, :1].copy()


@dataclass(frozen=True)
class Probe:
    """What the first images say about the rest: size, channel count, and the reference file."""

    size: tuple[int, int]  # (width, height) as PIL reports it
    channels: int
    first: FilePath
    forced: bool = False  # --channels set it: convert every image to it


def _open(path: FilePath) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise IngestError(f"{path}: not a readable image ({e})") from None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def size_error(path: FilePath, size: tuple[int, int], probe: Probe) -> IngestError:
    return IngestError(
        f"{path}: image is {_wxh(size)} (WxH) but {probe.first} is {_wxh(probe.size)}; "
        "all images must have the same size (resize them first)"
    )


def probe(paths: Sequence[FilePath], channels: int | None = None) -> Probe:
    """Read the headers of up to :data:`PROBE_FILES` evenly spaced files.

    The first file sets the size; the channel count is 1 if every probed image is grayscale,
    else 3 (unless ``channels`` forces it).
    """
    if channels not in (None, 1, 3):
        raise IngestError(f"--channels must be 1 or 3, got {channels}")
    picks = sorted(set(np.linspace(0, len(paths) - 1, min(PROBE_FILES, len(paths))).astype(int)))
    ref: Probe | None = None
    gray = True
    for i in picks:
        with _open(paths[i]) as im:
            size, mode = (int(im.size[0]), int(im.size[1])), im.mode
        if ref is None:
            ref = Probe(size, 1, paths[i])
        elif size != ref.size:
            raise size_error(paths[i], size, ref)
        gray &= mode in GRAY_MODES
    assert ref is not None, "probe needs at least one file"
    return Probe(ref.size, channels or (1 if gray else 3), ref.first, forced=channels is not None)


def load_image(path: FilePath, ref: Probe) -> np.ndarray:
    """Decode one file to uint8 [H, W, C]; :class:`IngestError` names the file on any problem."""
    with _open(path) as im:
        size = (int(im.size[0]), int(im.size[1]))
        if size != ref.size:
            raise size_error(path, size, ref)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise IngestError(f"{path}: not a readable image ({e})") from None
        return to_array(im, ref.channels, path, convert=ref.forced)


def decode_batches(
    paths: Sequence[FilePath], ref: Probe, batch_size: int, workers: int | None = None
) -> Iterator[np.ndarray]:
    """Yield uint8 [n, H, W, C] batches of ``paths`` in order, decoding on a thread pool.

    At most two batches are in flight (one being decoded ahead, one being consumed), so memory
    is bounded by the batch size, not the number of files. PIL releases the GIL while decoding.
    """
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    shape = (ref.size[1], ref.size[0], ref.channels)
    pending: deque[list[Future[np.ndarray]]] = deque()
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dgaal-decode")

    def collect(futures: list[Future[np.ndarray]]) -> np.ndarray:
        out = np.empty((len(futures), *shape), dtype=np.uint8)
        for i, f in enumerate(futures):  # in order: the first bad file is the one reported
            out[i] = f.result()
        return out

    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            pending.append([ex.submit(load_image, p, ref) for p in chunk])
            if len(pending) > 1:
                yield collect(pending.popleft())
        while pending:
            yield collect(pending.popleft())
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
