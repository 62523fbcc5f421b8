"""``dgaal export``, ``score`` and ``generate`` through Typer's CliRunner on real pools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from PIL import Image
from pools import Ran, assert_one_line_error, cli, random_pool

from cli import export_cmd, generate_cmd, score_cmd
from dgaal_core.loop.workdir import CHECKPOINT_FILE, round_dir, work_dir
from dgaal_core.model.config import preset
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from export import names
from export.runtime import GeneratorSession, select_lowest

ROOT = Path(__file__).resolve().parents[1]

# the registration lines of cli/main.py, mirrored so these tests do not depend on main.py
app = typer.Typer()
for module in (export_cmd, score_cmd, generate_cmd):
    module.register(app)


def dgaal(*args: str | Path) -> Ran:
    return cli(*args, app=app)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert_one_line_error(Ran(code, "", err), *needles, code=2)


def make_pool(path: Path, shape=(8, 8, 1), n: int = 200) -> np.ndarray:
    return random_pool(path, shape, n, initial=0.1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    pool = d / "pools.h5"
    images = make_pool(pool)
    code, out, err = dgaal(
        "export",
        "--pool",
        pool,
        "--untrained",
        "--out",
        d / "models",
        "--int8",
        "--triton",
        d / "triton",
    )
    assert code == 0, err
    assert "int8 sampler" in out and "triton model repository" in out
    return pool, images, d / "models"


def test_export_untrained_writes_checked_models(exported):
    _, _, models = exported
    assert (models / names.SAMPLER_FILE).is_file() and (models / names.GENERATOR_FILE).is_file()
    triton = models.parent / "triton"
    assert (triton / names.TRITON_SAMPLER / "config.pbtxt").is_file()


def test_score_writes_csv_and_npy(exported, tmp_path):
    pool, _, models = exported
    code, out, err = dgaal(
        "score",
        "--model",
        models / names.SAMPLER_FILE,
        "--pool",
        pool,
        "--out",
        tmp_path / "s.csv",
        "--provider",
        "cpu",
    )
    assert code == 0, err
    assert "scored 180 images" in out and "images/s" in out and "lowest 10" in out
    rows = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    with PoolReader(pool) as r:
        np.testing.assert_array_equal(rows[:, 0], r.ids(State.UNLABELLED))
    code, _, err = dgaal(
        "score",
        "--model",
        models / names.SAMPLER_FILE,
        "--pool",
        pool,
        "--out",
        tmp_path / "s.npy",
        "--state",
        "all",
        "--batch-size",
        "33",
    )
    assert code == 0, err
    table = np.load(tmp_path / "s.npy")
    assert table.dtype.names == ("id", "score") and table.shape == (200,)


def test_score_with_the_int8_sampler_rescores_when_its_metadata_says_so(exported, tmp_path):
    pool, _, models = exported
    int8 = models / names.SAMPLER_INT8_FILE
    if not int8.exists():
        pytest.skip("int8 refused for this tiny model")
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    code, out, err = dgaal("score", "--model", int8, "--pool", pool, "--out", tmp_path / "i.csv")
    assert code == 0, err
    assert "int8" in out
    code, _, err = dgaal(
        "score", "--model", models / names.SAMPLER_FILE, "--pool", pool, "--out", tmp_path / "f.csv"
    )
    assert code == 0, err
    quant, exact = (np.loadtxt(tmp_path / f, delimiter=",", skiprows=1) for f in ("i.csv", "f.csv"))
    if meta[names.META_INT8_MODE] == "cascade":
        assert "fp32 rescoring of the lowest" in out
        n = 9  # 5% of the 180 candidates; the export checked the cascade at 5% with 3x rescoring
        pick = [select_lowest(t[:, 0], t[:, 1], n).tolist() for t in (quant, exact)]
        assert pick[0] == pick[1]


def test_generate_npz_and_pngs(exported, tmp_path):
    pool, _, models = exported
    gen = models / names.GENERATOR_FILE
    code, _, err = dgaal(
        "generate",
        "--model",
        gen,
        "--pool",
        pool,
        "--ids",
        "4,1,9",
        "--out",
        tmp_path / "g.npz",
        "--seed",
        "3",
    )
    assert code == 0, err
    z = np.load(tmp_path / "g.npz")
    assert z["images"].shape == (3, 8, 8, 1) and z["ids"].tolist() == [4, 1, 9]
    (tmp_path / "ids.txt").write_text("7\n8, 9\n")
    code, _, err = dgaal(
        "generate",
        "--model",
        gen,
        "--pool",
        pool,
        "--ids",
        tmp_path / "ids.txt",
        "--out",
        tmp_path / "png",
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["7.png", "8.png", "9.png"]
    assert Image.open(tmp_path / "png" / "7.png").size == (8, 8)


def test_export_from_round_checkpoint_defaults_to_round_folder(tmp_path):
    from dgaal_core.model.checkpoint import save_checkpoint
    from dgaal_core.model.training import DGAALTrainer

    pool = tmp_path / "pools.h5"
    make_pool(pool, n=60)
    code, _, err = dgaal("export", "--pool", pool)
    one_line_error(code, err, "no checkpoint to export", "--untrained")
    trainer = DGAALTrainer.create(preset("small", (8, 8, 1), 10), device="cpu")
    save_checkpoint(round_dir(work_dir(pool), 1) / CHECKPOINT_FILE, trainer, round_index=1)
    code, _, err = dgaal("export", "--pool", pool)
    assert code == 0, err
    assert (round_dir(work_dir(pool), 1) / names.SAMPLER_FILE).is_file()
    code, _, err = dgaal("export", "--pool", pool, "--round", "4")
    one_line_error(code, err, "round-0004")
    # a round run with --workdir W: export finds it with the same --workdir, and says so without
    other = tmp_path / "elsewhere"
    save_checkpoint(
        round_dir(other, 2) / CHECKPOINT_FILE, trainer, round_index=2,
        extra={"noise_spread": 0.2},
    )  # fmt: skip
    code, _, err = dgaal("export", "--pool", pool, "--workdir", other)
    assert code == 0, err
    gen = GeneratorSession(round_dir(other, 2) / names.GENERATOR_FILE, "cpu")
    assert gen.info.round == 2 and gen.info.noise_range == pytest.approx((0.8, 1.2))
    empty = tmp_path / "empty-workdir"
    code, _, err = dgaal("export", "--pool", pool, "--workdir", empty)
    one_line_error(code, err, str(empty), "--workdir")


def test_bad_inputs_give_one_line_errors(exported, tmp_path):
    pool, _, models = exported
    sampler, gen = models / names.SAMPLER_FILE, models / names.GENERATOR_FILE
    rgb = tmp_path / "rgb.h5"
    make_pool(rgb, shape=(8, 8, 3), n=20)
    (tmp_path / "x.onnx").write_text("hello")
    cases = [
        (("score", "--model", tmp_path / "nope.onnx", "--pool", pool), ("nope.onnx", "no such")),
        (("score", "--model", tmp_path / "x.onnx", "--pool", pool), ("not a loadable ONNX",)),
        (("score", "--model", gen, "--pool", pool), ("expected a sampler",)),
        (("score", "--model", sampler, "--pool", rgb), ("channel", "rgb.h5")),
        (("score", "--model", sampler, "--pool", tmp_path / "none.h5"), ("no such pool",)),
        (("score", "--model", sampler, "--pool", pool, "--out", tmp_path / "s.txt"), (".csv",)),
        (("score", "--model", sampler, "--pool", pool, "--state", "new"), ("--state",)),
        (
            ("generate", "--model", gen, "--pool", pool, "--ids", "1,x", "--out", tmp_path / "o"),
            ("--ids",),
        ),
        (
            ("generate", "--model", gen, "--pool", pool, "--ids", "999", "--out", tmp_path / "o"),
            ("ids must lie in [0, 200)",),
        ),
        (
            ("generate", "--model", gen, "--pool", rgb, "--ids", "1", "--out", tmp_path / "o"),
            ("channel",),
        ),
        (("export", "--pool", rgb, "--checkpoint", tmp_path / "c.pt"), ("c.pt",)),
        (("export", "--pool", pool, "--untrained"), ("--out",)),
        (("score", "--model", sampler, "--pool", pool, "--workers", "2"), ("--engine ray",)),
        (
            (
                "generate",
                "--model",
                gen,
                "--pool",
                pool,
                "--ids",
                "1",
                "--out",
                tmp_path / "o",
                "--address",
                "auto",
            ),
            ("--engine ray only",),
        ),
        (
            ("score", "--model", sampler, "--pool", pool, "--engine", "ray", "--workers", "0"),
            ("--workers: expected an integer >= 1",),
        ),
    ]
    for args, needles in cases:
        code, _, err = dgaal(*args)
        one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_real_cli_entry_point_scores(exported):
    from cli.main import app as main_app

    registered = {c.name for c in main_app.registered_commands}
    assert {"score", "generate", "export"} <= registered  # the real app has the commands
    pool, _, models = exported
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "score",
            "--model",
            str(models / names.SAMPLER_FILE),
            "--pool",
            str(pool),
            "--provider",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "scored 180 images" in res.stdout
