"""``dgaal pool create`` / ``dgaal pool info`` through Typer's CliRunner, and once for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pools
import pytest
from PIL import Image
from pools import Ran, cli

from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import shard_dir

dgaal = cli  # in-process; test_real_console_script_without_torch runs the real one


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    pools.assert_one_line_error(Ran(code, "", err), *needles, code=2)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    shards = shard_dir(out)
    assert not shards.exists() or not any(shards.iterdir())


def image_folder(root: Path, classes: dict[str, int], fmt: str = "png", size=(4, 6)) -> None:
    rng = np.random.default_rng(len(classes))
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.{fmt}")


def test_create_from_folder_and_info(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    image_folder(src / "train", {"a": 6, "b": 4})
    image_folder(src / "test", {"a": 2, "b": 2}, fmt="jpg")
    out = tmp_path / "pools.h5"
    code, stdout, err = dgaal("pool", "create", out, "--from", "folder", src, "--initial", "0.2")
    assert code == 0, err
    assert "10 images (2 labelled), 4 test, 4x6x3, 2 classes" in stdout
    code, stdout, _ = dgaal("pool", "info", out)
    assert code == 0
    for word in ("unlabelled", "labelled", "generated", "per class", "4x6x3", "rounds: none"):
        assert word in stdout
    code, stdout, _ = dgaal("pool", "info", out, "--json")
    info = json.loads(stdout)
    expected = {"images": 10, "labelled": 2, "unlabelled": 8, "queried": 0, "generated": 0}
    expected |= {"test": 4, "num_classes": 2, "image_shape": [4, 6, 3], "rounds": []}
    assert {k: info[k] for k in expected} == expected
    assert info["per_class"]["a"]["labelled"] == 1  # stratified


def test_create_flat_folder_npz_and_options(tmp_path: Path) -> None:
    image_folder(tmp_path, {"flat": 5})
    out = tmp_path / "flat.h5"
    code, _, err = dgaal("pool", "create", out, "--from", "folder", tmp_path / "flat")
    assert_one_line_error(code, err, "flat", "--classes")
    assert_nothing_written(out)
    code, stdout, err = dgaal(
        "pool", "create", out, "--from", "folder", tmp_path / "flat", "--classes", "x,y,z"
    )
    assert code == 0 and "(0 labelled)" in stdout, err
    x = np.random.default_rng(0).integers(0, 256, (30, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(30) % 3)
    npz, opts = tmp_path / "d.npz", "--initial 9 --random --seed 4".split()
    code, _, err = dgaal(
        "pool", "create", tmp_path / "n.h5", "--from", "npz", npz, *opts, "--no-truth"
    )
    assert_one_line_error(code, err, "--initial 9 needs labelled source data")
    code, stdout, err = dgaal("pool", "create", tmp_path / "n.h5", "--from", "npz", npz, *opts)
    assert code == 0 and "30 images (9 labelled)" in stdout, err
    with PoolReader(tmp_path / "n.h5") as r:
        assert r.meta["ingest"] == {"initial": 9.0, "stratified": False, "seed": 4, "truth": True}


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path: Path) -> None:
    image_folder(tmp_path / "src", {"a": 3, "b": 3})
    (tmp_path / "src" / "b" / "1.png").write_bytes(b"garbage")
    image_folder(tmp_path / "sizes", {"a": 2}, size=(4, 6))
    image_folder(tmp_path / "sizes2", {"a": 1}, size=(5, 5))
    shutil.move(tmp_path / "sizes2" / "a" / "0.png", tmp_path / "sizes" / "a" / "9.png")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((3, 2, 2), np.uint8), y_train=[0, 1])
    out = tmp_path / "out.h5"
    cases = [
        (["folder", tmp_path / "src"], ["1.png", "not a readable image"]),
        (["folder", tmp_path / "sizes"], ["9.png", "5x5", "6x4"]),
        (["folder", tmp_path / "empty"], ["empty", "no images"]),
        (["folder", tmp_path / "missing"], ["missing", "no such folder"]),
        (["folder"], ["needs a SOURCE"]),
        (["npz", tmp_path / "bad.npz"], ["bad.npz", "y_train has 2 labels but x_train has 3"]),
        (["npz", tmp_path / "none.npz"], ["none.npz", "no such file"]),
        (["digits", tmp_path / "src"], ["takes no SOURCE"]),
        (["digits", "--classes", "a,,b"], ["--classes"]),
    ]
    for args, needles in cases:
        code, _, err = dgaal("pool", "create", out, "--from", *args)
        assert_one_line_error(code, err, *needles)
        assert_nothing_written(out)
    out.write_bytes(b"precious")
    code, _, err = dgaal("pool", "create", out, "--from", "digits")
    assert_one_line_error(code, err, str(out), "--force")
    assert out.read_bytes() == b"precious"
    code, _, err = dgaal("pool", "info", tmp_path / "nope.h5")
    assert_one_line_error(code, err, "nope.h5", "no such pool file")
    code, _, err = dgaal("pool", "info", out)
    assert_one_line_error(code, err, "out.h5", "not an HDF5 file")


def test_a_new_pool_beside_another_with_the_same_stem_keeps_both(tmp_path: Path) -> None:
    first, second = tmp_path / "pools.h5", tmp_path / "pools.hdf5"  # both use pools.shards/
    assert dgaal("pool", "create", first, "--from", "digits")[0] == 0
    x = np.random.default_rng(0).integers(0, 256, (30, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "other.npz", x_train=x, y_train=np.arange(30) % 3)
    code, _, err = dgaal("pool", "create", second, "--from", "npz", tmp_path / "other.npz")
    assert code == 0, err
    for path, rows in ((first, 1438), (second, 30)):
        code, stdout, err = dgaal("pool", "info", path, "--json")
        assert code == 0, err
        assert json.loads(stdout)["images"] == rows
        with PoolReader(path) as r:
            r.check_shards()
            assert r.read_images(np.arange(rows)).shape[0] == rows
    with PoolReader(second) as r:
        np.testing.assert_array_equal(r.read_images(np.arange(30)), x)


def test_info_prints_rounds(tmp_path: Path) -> None:
    from dgaal_core.pool.writer import PoolWriter

    out = tmp_path / "p.h5"
    assert dgaal("pool", "create", out, "--from", "digits", "--initial", "50")[0] == 0
    with PoolWriter(out) as w:
        w.append_round(
            {
                "round": 1,
                "strategy": "dgaal",
                "oracle_queries": 72,
                "free_labels": 3,
                "accuracy": 0.8125,
                "seconds": 1.0,
            }
        )
        w.commit()
    code, stdout, _ = dgaal("pool", "info", out)
    assert code == 0
    for word in ("strategy", "oracle_queries", "free_labels", "81.25%", "dgaal"):
        assert word in stdout
    assert "generated_added" not in stdout


@pytest.mark.slow
def test_real_console_script_without_torch(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dgaal")
    exe_path = str(exe) if exe.exists() else shutil.which("dgaal")
    if exe_path is None:
        pytest.skip("the dgaal console script is not installed")
    out = tmp_path / "digits.h5"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    create = subprocess.run(
        [exe_path, "pool", "create", str(out), "--from", "digits"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert create.returncode == 0, create.stderr
    info = subprocess.run(
        [exe_path, "pool", "info", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["image_shape"] == [8, 8, 1] and summary["num_classes"] == 10
    assert summary["images"] + summary["test"] == 1797 and summary["labelled"] == 144
    for run in (create, info):  # -X importtime lines: "import time: self | cumulative | name"
        imported = {
            line.rsplit("|", 1)[-1].strip()
            for line in run.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "dgaal_core.pool" in imported or "cli.main" in imported
        assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
