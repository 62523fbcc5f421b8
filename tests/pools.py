"""What the tests share: tiny data and pools, and ways to run ``dgaal`` (pytest puts this folder
on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


def class_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like 8x8x1 images of 4 classes (class c lights rows 2c..2c+1), and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    base = np.zeros((4, 8, 8, 1), np.uint8)
    for c in range(4):
        base[c, c * 2 : c * 2 + 2] = 220
    images = np.clip(base[labels] + rng.integers(0, 30, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
    return images, labels


CLASSES = [str(i) for i in range(10)]


def random_pool(
    path: Path,
    shape=(8, 8, 1),
    n: int = 700,
    seed: int = 0,
    *,
    initial: float = 0.2,
    test: int = 0,
    batch: int = 128,
) -> np.ndarray:
    """A pool of ``n`` random images of 10 classes (row i is class i % 10), streamed in in
    batches as ingestion does, ``initial`` of them labelled, the first ``test`` also as a test
    split; returns the images."""
    from dgaal_core.loop.selection import choose_initial
    from dgaal_core.pool.writer import PoolBuilder

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    truth = np.arange(n) % 10
    with PoolBuilder(path, shape, CLASSES) as b:
        for i in range(0, n, batch):
            b.add(images[i : i + batch], truth=truth[i : i + batch])
        if test:
            b.add_test(images[:test], truth[:test])
        b.finish(labelled=choose_initial(b.truth, initial, rng))
    return images


def export_untrained(out: Path, images: np.ndarray, seed: int = 0) -> tuple[Path, Path]:
    """``sampler.onnx`` and ``generator.onnx`` of freshly initialised ``small`` models."""
    from dgaal_core.model.config import preset
    from dgaal_core.model.networks import build_models
    from export.pipeline import ExportedModels, export_round

    shape = tuple(int(v) for v in images.shape[1:])
    config = preset("small", shape, 10).model
    m = build_models(config, seed)
    report = export_round(ExportedModels(m.g, m.d1, config, 1, "test"), out, images[:64])
    return report.sampler, report.generator


# ---- running the command line ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
DGAAL = shutil.which("dgaal", path=str(Path(sys.executable).parent)) or "dgaal"
# one intra-op thread: the test models are tiny, and it keeps the tests steady on a busy machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Ran(NamedTuple):
    """What a ``dgaal`` command did: ``code, stdout, stderr = cli(...)``."""

    code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:
        return self.code


def cli(*args: str | Path, cwd: Path | None = None, app: Any = None) -> Ran:
    """``dgaal ARGS`` in this process (typer's CliRunner: no interpreter start), from ``cwd``.

    An exception that is not an exit is re-raised: through the console script it would have
    been a traceback, which no command may end with."""
    from typer.testing import CliRunner

    if app is None:
        from cli.main import app
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        res = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(here)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Ran(res.exit_code, res.stdout, res.stderr)


def script(*args: str | Path, cwd: Path | None = None, check: bool = False) -> Ran:
    """``dgaal ARGS`` through the real console script, in a child process."""
    proc = subprocess.run(
        [DGAAL, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dgaal {' '.join(map(str, args))}:\n{proc.stdout}\n{proc.stderr}")
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(ran: Ran, *needles: str, code: int | None = None) -> None:
    """A refused command: non-zero exit (``code`` if given), no traceback, exactly one
    ``error: ...`` line on stderr holding every needle."""
    out = ran.stdout + ran.stderr
    assert ran.code != 0 if code is None else ran.code == code, out
    assert "Traceback" not in out, out
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for n in needles:
        assert n in lines[0], (n, lines[0])


def uint8_encoder(path: Path, weights: np.ndarray) -> Path:
    """A tiny ONNX image encoder: uint8 NHWC [N, H, W, C] in (C = ``weights.shape[0]``), the
    mean pixel per channel times ``weights`` [C, D] out, (N, D)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean-pixel",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.UINT8, ["n", "h", "w", weights.shape[0]]
            )
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"dgaal.encoder": "mean-pixel"})
    onnx.save(model, path)
    return path
