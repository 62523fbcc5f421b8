"""Ingestion sources and create_pool: layouts, colour modes, round trips, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgaal_core import ingest
from dgaal_core.errors import IngestError, PoolExistsError
from dgaal_core.ingest import folder as ingest_folder
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State, shard_dir

H, W = 5, 6


def rgb(seed: int, n: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_class_folders(
    root: Path, per_class: dict[str, int], fmt: str = "png", seed: int = 0
) -> dict[str, np.ndarray]:
    """``root/<class>/<i>.<fmt>`` with random RGB images; returns the arrays written."""
    out = {}
    for k, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        imgs = rgb(seed * 100 + k, n)
        for i, a in enumerate(imgs):
            Image.fromarray(a).save(root / name / f"{i:03d}.{fmt}")
        out[name] = imgs
    return out


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    shards = shard_dir(out)
    assert not shards.exists() or not any(shards.iterdir())
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def pool_images(path: Path) -> tuple[np.ndarray, np.ndarray | None, PoolReader]:
    r = PoolReader(path)
    imgs = r.read_images(r.ids())
    truth = r.read_truth(r.ids()) if r.has_truth else None
    return imgs, truth, r


# ---- folders -------------------------------------------------------------------------------------
def test_folder_png_round_trip_is_exact_and_jpeg_matches_pil(tmp_path: Path) -> None:
    src = tmp_path / "src"
    written = write_class_folders(src, {"cat": 4, "dog": 3})
    (src / "emu").mkdir()
    jpgs = [src / "emu" / f"{i}.JPG" for i in range(2)]
    for i, p in enumerate(jpgs):
        Image.fromarray(rgb(50 + i, 1)[0]).save(p, format="JPEG")
    (src / "cat" / "notes.txt").write_text("ignored")
    res = ingest.create_pool(tmp_path / "p.h5", ingest.open_folder(src), initial=0)
    imgs, truth, r = pool_images(res.path)
    assert r.class_names == ["cat", "dog", "emu"] and r.image_shape == (H, W, 3)
    np.testing.assert_array_equal(imgs[:4], written["cat"])
    np.testing.assert_array_equal(imgs[4:7], written["dog"])
    for row, p in zip(imgs[7:], jpgs, strict=True):
        np.testing.assert_array_equal(row, np.asarray(Image.open(p).convert("RGB")))
    assert truth is not None and truth.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    assert r.num_test == 0 and r.ids(State.LABELLED).size == 0
    r.close()


def test_folder_with_test_subfolder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_class_folders(src, {"a": 3, "b": 2})
    test = write_class_folders(src / "test", {"a": 1, "b": 2}, seed=1)
    src_obj = ingest.open_folder(src)
    assert src_obj.class_names == ["a", "b"] and (src_obj.num_train, src_obj.num_test) == (5, 3)
    res = ingest.create_pool(tmp_path / "p.h5", src_obj, initial=0)
    with PoolReader(res.path) as r:
        x, y = r.read_test()
    np.testing.assert_array_equal(x, np.concatenate([test["a"], test["b"]]))
    assert y.tolist() == [0, 1, 1]


def test_train_test_layout_and_test_dir_option(tmp_path: Path) -> None:
    src = tmp_path / "cifar"
    write_class_folders(src / "train", {"x": 2, "y": 2})
    write_class_folders(src / "test", {"x": 1, "y": 1}, seed=2)
    s = ingest.open_folder(src)
    assert s.class_names == ["x", "y"] and (s.num_train, s.num_test) == (4, 2)
    other = write_class_folders(tmp_path / "other", {"x": 2, "y": 1}, seed=3)
    s2 = ingest.open_folder(src / "train", test_dir=tmp_path / "other")
    assert s2.num_test == 3
    ingest.create_pool(tmp_path / "p.h5", s2, initial=0)
    with PoolReader(tmp_path / "p.h5") as r:
        np.testing.assert_array_equal(r.read_test()[0], np.concatenate([other["x"], other["y"]]))


def test_test_classes_must_match(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_class_folders(src / "train", {"a": 2, "b": 2})
    write_class_folders(src / "test", {"a": 1, "c": 1})
    with pytest.raises(IngestError, match=r"test class folders .*missing \['b'\].*unexpected"):
        ingest.open_folder(src)


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    for i, a in enumerate(rgb(0, 5)):
        Image.fromarray(a).save(src / f"{i}.png")
    with pytest.raises(IngestError, match="--classes"):
        ingest.open_folder(src)
    s = ingest.open_folder(src, class_names=["p", "q"])
    assert not s.has_labels
    with pytest.raises(IngestError, match=r"--initial 0\.1 needs labelled"):
        ingest.create_pool(tmp_path / "p.h5", s, initial=0.1)
    res = ingest.create_pool(tmp_path / "p.h5", s)  # default initial is 0 without truth
    with PoolReader(res.path) as r:
        assert not r.has_truth and r.num_classes == 2 and r.ids(State.UNLABELLED).size == 5


def test_channels_gray_rgba_palette_and_16_bit(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).integers(0, 256, (3, H, W), dtype=np.uint8)
    src = tmp_path / "g"
    (src / "k").mkdir(parents=True)
    for i, a in enumerate(gray):
        Image.fromarray(a, mode="L").save(src / "k" / f"{i}.png")
    Image.fromarray(gray[0].astype(np.uint16) << 8).save(src / "k" / "9.png")  # 16-bit
    s = ingest.open_folder(src)
    assert s.image_shape == (H, W, 1)
    ingest.create_pool(tmp_path / "g.h5", s, initial=0)
    with PoolReader(tmp_path / "g.h5") as r:
        imgs = r.read_images(r.ids())[..., 0]
    np.testing.assert_array_equal(imgs[:3], gray)
    np.testing.assert_array_equal(imgs[3], gray[0])
    # a grayscale image among colour ones is replicated; RGBA and palette images become RGB
    mixed = tmp_path / "m"
    (mixed / "k").mkdir(parents=True)
    colour = rgb(1, 1)[0]
    Image.fromarray(gray[0], mode="L").save(mixed / "k" / "0.png")
    Image.fromarray(colour).save(mixed / "k" / "1.png")
    Image.fromarray(np.dstack([colour, np.full((H, W), 7, np.uint8)])).save(mixed / "k" / "2.png")
    Image.fromarray(colour).convert("P").save(mixed / "k" / "3.png")
    s = ingest.open_folder(mixed)
    assert s.image_shape == (H, W, 3)
    batch = next(s.train_batches(16))[0]
    np.testing.assert_array_equal(batch[0], np.repeat(gray[0][:, :, None], 3, axis=2))
    np.testing.assert_array_equal(batch[1], colour)
    np.testing.assert_array_equal(batch[2], colour)
    assert batch[3].shape == (H, W, 3)
    # forcing one channel converts colour to luminance (as --channels 3 converts gray to RGB)
    forced = next(ingest.open_folder(mixed, channels=1).train_batches(16))[0]
    assert forced.shape == (4, H, W, 1)
    np.testing.assert_array_equal(forced[0, ..., 0], gray[0])
    luma = np.asarray(Image.fromarray(colour).convert("L"))
    np.testing.assert_array_equal(forced[1, ..., 0], luma)
    # a grey pool decided by the first images still refuses a colour image among later ones
    with pytest.raises(IngestError, match=r"1\.png: colour image .*--channels"):
        ingest_folder.to_array(Image.fromarray(colour), 1, mixed / "k" / "1.png")


def test_mixed_sizes_name_the_file_and_both_sizes(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    write_class_folders(src, {"a": 3})
    Image.fromarray(rgb(9, 1, h=7, w=4)[0]).save(src / "a" / "zz.png")
    with pytest.raises(IngestError, match=r"zz\.png: image is 4x7 .*000\.png is 6x5"):
        ingest.open_folder(src)  # caught by the probe, before anything is written
    monkeypatch.setattr(ingest_folder, "PROBE_FILES", 1)  # now only decoding can notice
    out = tmp_path / "p.h5"
    with pytest.raises(IngestError, match=r"zz\.png: image is 4x7 .*000\.png is 6x5"):
        ingest.create_pool(out, ingest.open_folder(src), batch_size=2)
    assert_nothing_written(out)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_names_the_file(tmp_path: Path, monkeypatch, content) -> None:
    src = tmp_path / "src"
    write_class_folders(src, {"a": 4, "b": 4}, fmt="jpg")
    bad = src / "b" / "001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    monkeypatch.setattr(ingest_folder, "PROBE_FILES", 1)
    out = tmp_path / "p.h5"
    with pytest.raises(IngestError, match=r"b/001\.jpg: not a readable image"):
        ingest.create_pool(out, ingest.open_folder(src), batch_size=3)
    assert_nothing_written(out)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: no images found"):
        ingest.open_folder(tmp_path / "empty")
    with pytest.raises(IngestError, match="nope: no such folder"):
        ingest.open_folder(tmp_path / "nope")
    write_class_folders(tmp_path / "src", {"a": 2})
    (tmp_path / "src" / "b").mkdir()
    with pytest.raises(IngestError, match=r"src/b: no images"):
        ingest.open_folder(tmp_path / "src")


def test_decode_batches_keep_order_and_size(tmp_path: Path) -> None:
    written = write_class_folders(tmp_path, {"a": 11})
    paths = sorted((tmp_path / "a").glob("*.png"))
    ref = ingest_folder.probe(paths)
    batches = list(ingest_folder.decode_batches(paths, ref, batch_size=4, workers=3))
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), written["a"])


# ---- npz and digits ------------------------------------------------------------------------------
def test_npz_gray_and_rgb(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.int64)  # ints, not uint8
    y = np.arange(20) % 3
    np.savez(tmp_path / "g.npz", x_train=x, y_train=y[:, None], x_test=x[:4], y_test=y[:4])
    s = ingest.open_npz(tmp_path / "g.npz")
    assert s.image_shape == (4, 4, 1) and s.class_names == ["0", "1", "2"] and s.num_test == 4
    res = ingest.create_pool(tmp_path / "g.h5", s, initial=6, seed=1)
    imgs, truth, r = pool_images(res.path)
    np.testing.assert_array_equal(imgs[..., 0], x)
    assert truth is not None and truth.tolist() == y.tolist()
    assert res.labelled == 6 and np.bincount(r.labels[r.labels >= 0]).tolist() == [2, 2, 2]
    r.close()
    xc = rgb(1, 8)
    np.savez(tmp_path / "c.npz", x_train=xc, y_train=np.arange(8) % 2)
    s = ingest.open_npz(tmp_path / "c.npz", class_names=["no", "yes", "maybe"])
    assert s.image_shape == (H, W, 3) and s.class_names == ["no", "yes", "maybe"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x_train": np.zeros((4, 3, 3), np.float32), "y_train": np.zeros(4)},
            r"x_train must hold uint8 .*got float32",
        ),
        (
            {"x_train": np.full((4, 3, 3), 300), "y_train": np.zeros(4, int)},
            r"x_train pixel values must lie in 0\.\.255, found 300\.\.300",
        ),
        (
            {"x_train": np.zeros((4, 3, 3), np.uint8), "y_train": np.zeros(5, int)},
            r"y_train has 5 labels but x_train has 4 images",
        ),
        (
            {"x_train": np.zeros((4, 3, 3), np.uint8), "y_train": np.array([0, 1, -1, 0])},
            r"y_train labels must be >= 0, found -1 at index 2",
        ),
        (
            {"x_train": np.zeros((4, 3, 8, 8), np.uint8), "y_train": np.zeros(4, int)},
            r"x_train must have shape .*channels first",
        ),
        ({"images": np.zeros((4, 3, 3), np.uint8)}, r"no array 'x_train' \(found \['images'\]\)"),
        ({"x_train": np.array([None, 1], dtype=object)}, r"not a readable \.npz"),
    ],
)
def test_npz_bad_input(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(IngestError, match=r"bad\.npz: " + message):
        ingest.open_npz(tmp_path / "bad.npz")


def test_npz_label_out_of_range_and_not_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_train=np.zeros((3, 2, 2), np.uint8), y_train=[0, 1, 2])
    with pytest.raises(IngestError, match=r"y_train label 2 at index 2 is out of range for 2"):
        ingest.open_npz(tmp_path / "d.npz", class_names=["a", "b"])
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    with pytest.raises(IngestError, match=r"junk\.npz: not a readable"):
        ingest.open_npz(tmp_path / "junk.npz")
    with pytest.raises(IngestError, match=r"missing\.npz: no such file"):
        ingest.open_npz(tmp_path / "missing.npz")


def test_digits_split_is_stratified_and_seeded() -> None:
    a, b, c = ingest.load_digits(0), ingest.load_digits(0), ingest.load_digits(1)
    assert a.image_shape == (8, 8, 1) and a.x_train.dtype == np.uint8
    assert a.x_train.max() == 255 and a.num_train + a.num_test == 1797
    assert a.y_test is not None and abs(a.num_test - 0.2 * 1797) < 10
    assert np.bincount(a.y_test).min() >= 35
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test) or not np.array_equal(a.x_test, c.x_test)


# ---- initial set, truth, force, progress ---------------------------------------------------------
def test_initial_fraction_count_and_stratification(tmp_path: Path) -> None:
    x = np.zeros((100, 2, 2), np.uint8)
    y = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    s = ingest.MemorySource("npz", "mem", list("abcd"), x[..., None], y)
    r1 = ingest.create_pool(tmp_path / "f.h5", s, initial=0.1)
    with PoolReader(r1.path) as r:
        assert np.bincount(r.labels[r.labels >= 0]).tolist() == [4, 3, 2, 1]
        assert (r.fields["round"][r.ids(State.LABELLED)] == 0).all()
    assert ingest.create_pool(tmp_path / "c.h5", s, initial=7).labelled == 7
    r2 = ingest.create_pool(tmp_path / "r.h5", s, initial=0.5, stratified=False, seed=3)
    r3 = ingest.create_pool(tmp_path / "r3.h5", s, initial=0.5, stratified=False, seed=3)
    with PoolReader(r2.path) as a, PoolReader(r3.path) as b:
        np.testing.assert_array_equal(a.ids(State.LABELLED), b.ids(State.LABELLED))
        assert a.ids(State.LABELLED).size == 50
    for bad, msg in [(101, "more than the 100"), (2.5, "whole count"), (-1, ">= 0")]:
        with pytest.raises(IngestError, match=msg):
            ingest.create_pool(tmp_path / "bad.h5", s, initial=bad)
        assert_nothing_written(tmp_path / "bad.h5")


def test_no_truth_force_and_progress(tmp_path: Path) -> None:
    s = ingest.MemorySource("npz", "mem", ["a", "b"], rgb(0, 12), np.arange(12) % 2)
    out = tmp_path / "p.h5"
    with pytest.raises(IngestError, match="use --initial 0"):
        ingest.create_pool(out, s, initial=2, keep_truth=False)
    calls: list[tuple[str, int, int]] = []
    ingest.create_pool(out, s, keep_truth=False, batch_size=5, progress=lambda *a: calls.append(a))
    assert calls == [("train", 5, 12), ("train", 10, 12), ("train", 12, 12)]
    with PoolReader(out) as r:
        assert not r.has_truth and r.ids(State.LABELLED).size == 0
    with pytest.raises(PoolExistsError, match="pass --force"):
        ingest.create_pool(out, s)
    ingest.create_pool(out, s, initial=4, force=True)
    with PoolReader(out) as r:
        assert r.has_truth and r.ids(State.LABELLED).size == 4
    assert len(list(shard_dir(out).iterdir())) == 1  # the replaced pool's shard is gone


def test_class_names_from() -> None:
    assert ingest.class_names_from("a, b,c") == ["a", "b", "c"]
    assert ingest.class_names_from(num_classes=3) == ["0", "1", "2"]
    assert ingest.class_names_from() is None
    for kwargs in [
        {"classes": "a,,b"},
        {"classes": "a,a"},
        {"num_classes": 0},
        {"classes": "a", "num_classes": 1},
    ]:
        with pytest.raises(IngestError):
            ingest.class_names_from(**kwargs)
