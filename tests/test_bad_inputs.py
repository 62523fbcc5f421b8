"""Bad input through the ``dgaal`` command line: one line, no traceback, nothing changed.

The cases run in this process (typer's CliRunner, re-raising anything that would have been a
traceback); a few run again through the real console script, which must behave the same.

Every refused command must exit non-zero with a single ``error: ...`` line naming the file or
option and what was expected, leave an existing pool byte for byte as it was, and leave no pool,
shard or lock file behind when it was asked to create one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pools import assert_one_line_error, class_images, cli, script

from dgaal_core import ingest
from dgaal_core.loop.workdir import work_dir
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State, lock_path, shard_dir
from dgaal_core.pool.writer import PoolWriter

HUGE = "99999999999999999999999"
QUERIED = (5, 6, 7)  # rows of asked.h5 waiting for a person's answer
dgaal = cli  # in-process: a fresh interpreter per case costs seconds (the console script below)


def snapshot(pool: Path) -> tuple:
    """Everything a command could change about a pool: its bytes, its shards, its work folder."""
    shards = sorted((p.name, p.stat().st_size) for p in shard_dir(pool).iterdir())
    return pool.read_bytes(), shards, work_dir(pool).exists()


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with source files of every kind and two tiny pools: p.h5, asked.h5."""
    d = tmp_path_factory.mktemp("bad")
    x, y = class_images(40)
    np.savez(d / "good.npz", x_train=x, y_train=y)
    data = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    np.save(d / "plain.npy", x)
    objects = np.empty(3, object)
    objects[:] = [1, "a", None]
    bad = {
        "zero_size": {"x_train": np.zeros((4, 0, 0), np.uint8), "y_train": np.zeros(4, int)},
        "objects": {"x_train": objects, "y_train": np.arange(3)},
        "floats": {"x_train": x.astype(np.float32) / 255, "y_train": y},
        "over_255": {"x_train": x.astype(np.int32) * 2, "y_train": y},
        "rank_5": {"x_train": x[..., None], "y_train": y},
        "two_channels": {"x_train": np.repeat(x, 2, axis=3), "y_train": y},
        "four_channels": {"x_train": np.repeat(x, 4, axis=3), "y_train": y},
        "short_y": {"x_train": x, "y_train": y[:-1]},
        "negative_y": {"x_train": x, "y_train": y - 1},
        "x_test_alone": {"x_train": x, "y_train": y, "x_test": x[:4]},
    }
    for name, arrays in bad.items():
        np.savez(d / f"{name}.npz", **arrays)
    (d / "not_a_pool.h5").write_bytes(b"hello, not HDF5")
    (d / "a_file").write_text("not a folder")
    for name in ("p.h5", "asked.h5"):
        script(
            "pool", "create", name, "--from", "npz", "good.npz", "--initial", "8", cwd=d, check=True
        )
    script(
        "pool", "create", "unlabelled.h5", "--from", "npz", "good.npz", "--initial", "0", cwd=d,
        check=True,
    )  # fmt: skip
    (d / "truncated.h5").write_bytes((d / "p.h5").read_bytes()[:3000])
    with PoolWriter(d / "asked.h5") as w:
        w.set_state(list(QUERIED), State.QUERIED)
        w.commit()
    answers = {
        "latin1.csv": b"id,label\n5,\xe9t\xe9\n",
        "no_label_column.csv": b"id,labl\n5,1\n",
        "not_queried.csv": b"id,label\n9,1\n",
        "unknown_label.csv": b"id,label\n5,cat\n",
        "conflicting.csv": b"id,label\n5,1\n5,2\n",
        "empty.csv": b"",
        "header_only.csv": b"id,label\n",
        "id_not_integer.csv": b"id,label\nfive,1\n",
        "id_out_of_range.csv": b"id,label\n999,1\n",
        "label_index_too_big.csv": b"id,label\n5,4\n",
        "labels_all_empty.csv": b"id,label\n5,\n6,\n",
    }
    for name, text in answers.items():
        (d / name).write_bytes(text)
    image_folders(d)
    return d


def _png_bomb() -> bytes:
    """A valid PNG header claiming 30000x30000 pixels: a decompression bomb, a few bytes long."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0))
    body = chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + header + body


def image_folders(d: Path) -> None:
    """Folders of 2 classes x 3 images, each with one oddity (see FOLDER_CASES, ODD_FOLDERS)."""
    rng = np.random.default_rng(0)
    kinds = {
        "plain": lambda: Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)),
        "rgba": lambda: Image.fromarray(rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)),
        "png16": lambda: Image.fromarray(rng.integers(0, 65536, (4, 4), dtype=np.uint16)),
        "palette": lambda: Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).convert("P"),
    }
    for name in ("zero_byte", "truncated_jpeg", "text_png", "mixed", "bomb", "self_link", "loop"):
        kinds[name] = kinds["plain"]
    kinds["non_utf8"] = kinds["plain"]
    for name, make in kinds.items():
        for c in ("a", "b"):
            (d / "dirs" / name / c).mkdir(parents=True)
            for i in range(3):
                make().save(d / "dirs" / name / c / f"{i}.png")
    (d / "dirs" / "empty").mkdir()
    odd = d / "dirs"
    (odd / "zero_byte" / "a" / "z.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).save(odd / "x.jpg")
    jpeg = (odd / "x.jpg").read_bytes()
    (odd / "truncated_jpeg" / "a" / "t.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (odd / "text_png" / "b" / "t.png").write_text("hello, I am not a PNG")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(odd / "mixed" / "b" / "9.png")
    (odd / "bomb" / "a" / "bomb.png").write_bytes(_png_bomb())
    os.symlink("self.png", odd / "self_link" / "a" / "self.png")
    os.symlink("..", odd / "loop" / "a" / "up")  # a folder loop: walked once
    plain = odd / "non_utf8" / "a" / "0.png"
    os.rename(plain, os.fsencode(plain.parent) + b"/\xff\xfe.png")


CREATE = ["pool", "create", "new.h5", "--from", "npz"]
CREATE_CASES = {
    "truncated_npz": (["truncated.npz"], ["truncated.npz", "not a readable .npz"]),
    "plain_npy": (["plain.npy"], ["plain.npy", "expected an .npz archive"]),
    "zero_size_images": (["zero_size.npz"], ["zero_size.npz", "at least 1x1"]),
    "object_arrays": (["objects.npz"], ["objects.npz", "without pickles"]),
    "float_images": (["floats.npz"], ["floats.npz", "x_train", "uint8"]),
    "values_over_255": (["over_255.npz"], ["over_255.npz", "0..255"]),
    "wrong_rank": (["rank_5.npz"], ["rank_5.npz", "(N, H, W, 1|3)"]),
    "two_channels": (["two_channels.npz"], ["two_channels.npz", "(N, H, W, 1|3)"]),
    "four_channels": (["four_channels.npz"], ["four_channels.npz", "(N, H, W, 1|3)"]),
    "y_length_mismatch": (["short_y.npz"], ["short_y.npz", "39 labels", "40 images"]),
    "negative_labels": (["negative_y.npz"], ["negative_y.npz", ">= 0"]),
    "x_test_without_y_test": (["x_test_alone.npz"], ["x_test_alone.npz", "y_test"]),
    "initial_inf": (["good.npz", "--initial", "inf"], ["--initial", "inf"]),
    "initial_above_pool_size": (["good.npz", "--initial", "41"], ["--initial 41", "40 images"]),
    "initial_negative": (["good.npz", "--initial=-1"], ["--initial", ">= 0"]),
    "seed_negative": (["good.npz", "--seed", "-1"], ["--seed -1", "0.."]),
    "seed_huge": (["good.npz", "--seed", HUGE], [f"--seed {HUGE}", "0.."]),
    "npz_missing": (["nope.npz"], ["nope.npz"]),
}


@pytest.mark.parametrize("args, needles", CREATE_CASES.values(), ids=CREATE_CASES.keys())
def test_refused_pool_create_leaves_nothing(here: Path, args: list, needles: list) -> None:
    proc = dgaal(*CREATE, *args, cwd=here)
    assert_one_line_error(proc, *needles)
    new = here / "new.h5"
    assert not new.exists() and not lock_path(new).exists()
    assert not shard_dir(new).exists() or not any(shard_dir(new).iterdir())


FOLDER_CASES = {
    "empty_folder": ("empty", ["dirs/empty", "no images found"]),
    "zero_byte_file": ("zero_byte", ["zero_byte/a/z.png", "not a readable image"]),
    "truncated_jpeg": ("truncated_jpeg", ["truncated_jpeg/a/t.jpg", "not a readable image"]),
    "text_named_png": ("text_png", ["text_png/b/t.png", "not a readable image"]),
    "mixed_sizes": ("mixed", ["mixed/b/9.png", "same size"]),
    "decompression_bomb": ("bomb", ["bomb/a/bomb.png", "decompression bomb"]),
    "symlink_to_itself": ("self_link", ["self_link/a/self.png", "symbolic links"]),
    "no_such_folder": ("nope", ["dirs/nope"]),
}


@pytest.mark.parametrize("folder, needles", FOLDER_CASES.values(), ids=FOLDER_CASES.keys())
def test_refused_folder_leaves_nothing_not_even_parent_folders(
    here: Path, folder: str, needles: list
) -> None:
    new = here / "deep" / "er" / "new.h5"
    proc = dgaal("pool", "create", new, "--from", "folder", f"dirs/{folder}", cwd=here)
    assert_one_line_error(proc, *needles)
    assert not (here / "deep").exists()


ODD_FOLDERS = {  # accepted: folder -> (channels, images)
    "rgba": (3, 6),  # alpha dropped
    "png16": (1, 6),  # top 8 bits kept
    "palette": (3, 6),
    "loop": (1, 6),  # a/up -> .. is not walked twice
    "non_utf8": (1, 6),  # a file name that is not UTF-8
}


@pytest.mark.parametrize("folder, expected", ODD_FOLDERS.items(), ids=ODD_FOLDERS.keys())
def test_odd_but_valid_folders_make_a_pool(here: Path, folder: str, expected: tuple) -> None:
    out = here / f"odd_{folder}.h5"  # in-process: what is tested is the reading, not the CLI
    ingest.create_pool(out, ingest.open_source("folder", here / "dirs" / folder), initial=0)
    with PoolReader(out) as r:
        assert (r.image_shape[2], r.num_rows) == expected
        r.check_shards()


ROUND = ["round", "--pool", "p.h5", "--quiet"]
POOL_CASES = {
    "existing_output_without_force": (
        ["pool", "create", "p.h5", "--from", "npz", "good.npz"],
        ["p.h5", "--force"],
    ),
    "budget_nan": ([*ROUND, "--budget", "nan"], ["--budget nan"]),
    "budget_inf": ([*ROUND, "--budget", "inf"], ["--budget inf"]),
    "budget_zero": ([*ROUND, "--budget", "0"], ["budget", "> 0"]),
    "budget_negative": ([*ROUND, "--budget", "-3"], ["budget", "> 0"]),
    "budget_not_whole": ([*ROUND, "--budget", "4.5"], ["budget", "whole count"]),
    "budget_above_candidates": ([*ROUND, "--budget", "1000"], ["--budget 1000", "32 candidates"]),
    "unknown_strategy": ([*ROUND, "--strategy", "nope"], ["strategy 'nope'", "dgaal"]),
    "round_seed_negative": ([*ROUND, "--seed", "-1"], ["--seed -1"]),
    "round_seed_huge": ([*ROUND, "--seed", HUGE], [f"--seed {HUGE}"]),
    "workdir_is_a_file": ([*ROUND, "--budget", "4", "--workdir", "a_file"], ["--workdir a_file"]),
    "abandon_nothing": ([*ROUND, "--abandon"], ["p.h5", "no unfinished round"]),
    "score_threads_negative": (
        ["score", "--model", "m.onnx", "--pool", "p.h5", "--threads", "-2"],
        ["--threads", "-2"],
    ),
    "score_lowest_negative": (
        ["score", "--model", "m.onnx", "--pool", "p.h5", "--lowest", "-5"],
        ["--lowest", "-5"],
    ),
    "score_not_onnx": (
        ["score", "--model", "good.npz", "--pool", "p.h5"],
        ["good.npz", "not a loadable ONNX model"],
    ),
    "experiment_seed_negative": (
        ["experiment", "--pool", "p.h5", "--out", "exp", "--seeds=-1", "--strategies", "random"],
        ["--seeds -1", "expected an integer"],
    ),
    "experiment_unknown_strategy": (
        ["experiment", "--pool", "p.h5", "--out", "exp", "--strategies", "nope"],
        ["nope"],
    ),
    "experiment_seed_twice": (
        ["experiment", "--pool", "p.h5", "--out", "exp", "--seeds", "0,0"],
        ["--seeds", "twice"],
    ),
    "round_unknown_preset": ([*ROUND, "--preset", "huge"], ["preset", "huge"]),
    "score_model_missing": (["score", "--model", "nope.onnx", "--pool", "p.h5"], ["nope.onnx"]),
    "generate_id_not_a_number": (
        ["generate", "--model", "g.onnx", "--pool", "p.h5", "--ids", "3,x", "--out", "gen"],
        ["--ids", "x"],
    ),
    "label_ids_not_queried": (
        ["label", "--pool", "p.h5", "not_queried.csv"],
        ["not waiting for an answer"],
    ),
    "generate_duplicate_ids": (
        ["generate", "--model", "g.onnx", "--pool", "p.h5", "--ids", "3,3,17", "--out", "gen"],
        ["--ids 3,3,17", "repeated: 3"],
    ),
}
if not (shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists()):
    POOL_CASES["device_cuda_without_gpu"] = (
        [*ROUND, "--budget", "4", "--device", "cuda"],
        ["cuda", "no CUDA device"],
    )


@pytest.mark.parametrize("args, needles", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_refused_command_leaves_the_pool_unchanged(here: Path, args: list, needles: list) -> None:
    before = snapshot(here / "p.h5")
    assert_one_line_error(dgaal(*args, cwd=here), *needles)
    assert snapshot(here / "p.h5") == before
    assert not (here / "gen").exists() and not (here / "exp").exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["pool", "info", "not_a_pool.h5"], ["not_a_pool.h5", "not an HDF5 file"]),
        (["pool", "info", "truncated.h5"], ["truncated.h5", "not an HDF5 file"]),
        (["round", "--pool", "truncated.h5", "--budget", "4"], ["truncated.h5", "not an HDF5"]),
        (["label", "--pool", "not_a_pool.h5", "latin1.csv"], ["not_a_pool.h5", "not an HDF5"]),
        (["pool", "info", "missing.h5"], ["missing.h5", "no such pool file"]),
        (["pool", "check", "missing.h5"], ["missing.h5", "no such pool file"]),
        (["pool", "check", "dirs"], ["dirs", "no such pool file"]),
        (["pool", "check", "good.npz"], ["good.npz", "not an HDF5 file"]),
    ],
    ids=[
        "info_not_hdf5",
        "info_truncated",
        "round_truncated",
        "label_not_hdf5",
        "info_missing",
        "check_missing",
        "check_a_folder",
        "check_an_npz",
    ],
)
def test_files_that_are_not_pools(here: Path, args: list, needles: list) -> None:
    assert_one_line_error(dgaal(*args, cwd=here), *needles)


def test_a_round_on_a_pool_without_labels_starts_cold_instead_of_refusing(here: Path) -> None:
    pool = here / "unlabelled.h5"
    proc = dgaal("round", "--pool", pool.name, "--budget", "4", "--quiet", "--task-epochs", "1",
                 "--task-min-steps", "0", cwd=here)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "unlabelled.h5 has no labels yet: round 1 picks its images at random" in proc.stderr
    with PoolReader(pool) as r:  # the source's truth answered them (the simulated oracle)
        assert r.rounds()[0]["strategy"] == "random" and len(r.ids(State.LABELLED)) == 4


def test_pool_info_on_a_pool_without_its_shard_folder_says_it_is_damaged(here: Path) -> None:
    shutil.copy(here / "p.h5", here / "moved.h5")  # its shards would be in moved.shards/
    proc = dgaal("pool", "info", "moved.h5", "--json", cwd=here)
    assert_one_line_error(proc, "moved.h5", "damaged pool", "missing")
    assert proc.stdout == ""
    before = (here / "moved.h5").read_bytes()  # a round finds it before training anything
    proc = dgaal("round", "--pool", "moved.h5", "--budget", "4", "--quiet", cwd=here)
    assert_one_line_error(proc, "moved.h5", "damaged pool", "missing")
    assert (here / "moved.h5").read_bytes() == before
    assert not work_dir(here / "moved.h5").exists()


def test_pool_check_finds_the_damage_of_these_cases(here: Path) -> None:
    """``dgaal pool check`` on the damaged files above: not a pool at all (exit 2, one line),
    or a pool whose shards are gone or garbage (exit 1, the shards check names them)."""
    for name, needles in (("not_a_pool.h5", ["not an HDF5 file"]), ("truncated.h5", ["not an"])):
        assert_one_line_error(dgaal("pool", "check", name, cwd=here), name, *needles)
    shutil.copy(here / "p.h5", here / "moved2.h5")  # its shards would be in moved2.shards/
    shutil.copy(here / "p.h5", here / "garbage.h5")
    shutil.copytree(shard_dir(here / "p.h5"), shard_dir(here / "garbage.h5"))
    for shard in shard_dir(here / "garbage.h5").iterdir():
        shard.write_bytes(b"garbage " * 100)
    for name, needle in (("moved2.h5", "is missing"), ("garbage.h5", "checksum mismatch")):
        proc = dgaal("pool", "check", name, "--json", cwd=here)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
        assert checks["shards"]["status"] == "damaged" and needle in checks["shards"]["detail"]
    assert dgaal("pool", "check", "p.h5", cwd=here).returncode == 0


ANSWER_CASES = {
    "not_utf8": ("latin1.csv", ["latin1.csv", "not UTF-8"]),
    "missing_label_column": ("no_label_column.csv", ["no_label_column.csv", "'label'"]),
    "id_not_queried": ("not_queried.csv", ["not_queried.csv:2", "id 9", "not waiting for"]),
    "unknown_label": ("unknown_label.csv", ["unknown_label.csv:2", "'cat'", "not a class"]),
    "conflicting_duplicates": ("conflicting.csv", ["conflicting.csv:3", "conflicting answer"]),
    "empty_file": ("empty.csv", ["empty.csv", "'id' and 'label' columns"]),
    "header_only": ("header_only.csv", ["header_only.csv", "'id' and 'label' columns"]),
    "id_not_integer": ("id_not_integer.csv", ["id_not_integer.csv:2", "'five'", "integer"]),
    "id_out_of_range": ("id_out_of_range.csv", ["id_out_of_range.csv:2", "999", "not in the pool"]),
    "label_index_too_big": ("label_index_too_big.csv", ["label_index_too_big.csv:2", "'4'"]),
    "no_answers": ("labels_all_empty.csv", ["labels_all_empty.csv", "no answers"]),
    "no_such_file": ("nope.csv", ["nope.csv", "no such answers file"]),
}


@pytest.mark.parametrize("name, needles", ANSWER_CASES.values(), ids=ANSWER_CASES.keys())
def test_refused_answers_change_nothing(here: Path, name: str, needles: list) -> None:
    before = snapshot(here / "asked.h5")
    assert_one_line_error(dgaal("label", "--pool", "asked.h5", name, cwd=here), *needles)
    assert snapshot(here / "asked.h5") == before


@pytest.mark.parametrize(
    "text",
    [
        b"\xef\xbb\xbfid,label\r\n5,1\r\n6,2\r\n",
        b"id,suggested_label,label\r\n5,0,1\r\n6,0,2\r\n",
        b'notes,id,label,who\n"a, b",5,1,me\n,6,2,\n',
    ],
    ids=["utf8_bom", "crlf", "extra_columns"],
)
def test_answers_with_a_bom_or_crlf_line_ends_are_accepted(here: Path, text: bytes) -> None:
    pool = here / "answer_me.h5"
    shutil.copy(here / "asked.h5", pool)
    shutil.rmtree(shard_dir(pool), ignore_errors=True)
    shutil.copytree(shard_dir(here / "asked.h5"), shard_dir(pool))
    (here / "answers.csv").write_bytes(text)
    proc = dgaal("label", "--pool", pool.name, "answers.csv", cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert "2 answers imported; 1 still waiting" in proc.stdout
    with PoolReader(pool) as r:
        assert r.labels[[5, 6]].tolist() == [1, 2]
        assert r.states[[5, 6, 7]].tolist() == [State.LABELLED, State.LABELLED, State.QUERIED]


@pytest.mark.parametrize(
    "ids, needles",
    [
        (np.array([3.7, 17.2]), ["float_ids.npy", "integer array"]),
        (None, [HUGE]),
    ],
    ids=["generate_float_ids_npy", "generate_huge_id"],
)
def test_generate_refuses_ids_it_cannot_take_exactly(here: Path, ids, needles: list) -> None:
    arg = HUGE
    if ids is not None:
        np.save(here / "float_ids.npy", ids)
        arg = "float_ids.npy"
    proc = dgaal(
        "generate", "--model", "g.onnx", "--pool", "p.h5", "--ids", arg, "--out", "gen", cwd=here
    )
    assert_one_line_error(proc, "--ids", *needles)
    assert not (here / "gen").exists()


def test_an_oversized_answers_file_is_refused_before_it_is_read(here: Path) -> None:
    (here / "huge.csv").write_text("id,label\n" + "5,a\n" * 600_000)  # 2.4 MB for a tiny pool
    before = snapshot(here / "asked.h5")
    proc = dgaal("label", "--pool", "asked.h5", "huge.csv", cwd=here)
    assert_one_line_error(proc, "huge.csv", "bytes at most")
    assert snapshot(here / "asked.h5") == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needles",
    [
        ([*CREATE, "good.npz", "--seed", "-1"], ["--seed -1"]),
        (["round", "--pool", "p.h5", "--preset", "huge", "--quiet"], ["preset", "huge"]),
        (["label", "--pool", "asked.h5", "not_queried.csv"], ["not_queried.csv:2", "id 9"]),
    ],
    ids=["create", "round", "label"],
)
def test_the_real_console_script_gives_the_same_one_line(here: Path, args, needles) -> None:
    before = snapshot(here / "p.h5"), snapshot(here / "asked.h5")
    ran = script(*args, cwd=here)
    assert_one_line_error(ran, *needles)
    assert ran.stderr == cli(*args, cwd=here).stderr
    assert (snapshot(here / "p.h5"), snapshot(here / "asked.h5")) == before
