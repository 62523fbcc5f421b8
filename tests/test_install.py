"""The base install (no extras) in a fresh venv without torch: scoring and generation work and
give the full install's numbers; commands that need training say which extra to install.

Builds the wheel from a copy of the sources and installs it with pip from the package index
(onnxruntime, numpy, h5py, typer, rich, filelock), so it needs the network the CI machine has.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pools import export_untrained, random_pool, uint8_encoder

from export.runtime import GeneratorSession, SamplerSession

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "dgaal_core", "export", "cli")
TRAINING_ONLY = ("torch", "onnx", "onnxscript", "sklearn", "PIL", "matplotlib", "starlette", "ray")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A fresh venv holding ``pip install dgaal-*.whl`` (no extras); returns its python."""
    d = tmp_path_factory.mktemp("install")
    src = d / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: building in the checkout would leave build/ behind
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(d / "dist"), "."],
        cwd=src,
    )
    (wheel,) = (d / "dist").glob("dgaal-*.whl")
    venv = d / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=d)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-compile", str(wheel)],
        cwd=d,
    )  # fmt: skip
    return python


def test_base_install_has_no_training_packages(base_venv):
    code = textwrap.dedent(
        f"""
        import importlib.util, json
        print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {TRAINING_ONLY!r}}}))
        """
    )
    found = json.loads(_run([str(base_venv), "-c", code], cwd=base_venv.parent).stdout)
    assert not any(found.values()), found


def test_base_install_scores_and_generates_like_the_full_install(base_venv, tmp_path):
    pool = tmp_path / "pools.h5"
    images = random_pool(pool, shape=(8, 8, 3), n=300)
    sampler_path, generator_path = export_untrained(tmp_path / "model", images)
    batch = images[:37]
    np.save(tmp_path / "batch.npy", batch)
    code = textwrap.dedent(
        f"""
        import numpy as np
        from export.runtime import GeneratorSession, SamplerSession, select_lowest
        s = SamplerSession({str(sampler_path)!r}, provider="cpu", threads=1)
        res = s.score_pool({str(pool)!r})
        mem, _ = s.score(np.load({str(tmp_path / "batch.npy")!r}))
        g = GeneratorSession({str(generator_path)!r}, provider="cpu", threads=1)
        gen = g.generate_pool({str(pool)!r}, [4, 2, 9], g.draw_noise_scales(3))
        np.savez({str(tmp_path / "base.npz")!r}, ids=res.ids, scores=res.scores, mem=mem, gen=gen,
                 lowest=select_lowest(res.ids, res.scores, 20))
        """
    )
    _run([str(base_venv), "-c", code], cwd=tmp_path)  # not ROOT: the checkout must not be on path
    got = np.load(tmp_path / "base.npz")
    s = SamplerSession(sampler_path, provider="cpu", threads=1)
    want = s.score_pool(pool)
    np.testing.assert_array_equal(got["ids"], want.ids)
    np.testing.assert_array_equal(got["scores"], want.scores)
    np.testing.assert_array_equal(got["mem"], s.score(batch)[0])
    g = GeneratorSession(generator_path, provider="cpu", threads=1)
    np.testing.assert_array_equal(
        got["gen"], g.generate_pool(pool, [4, 2, 9], g.draw_noise_scales(3))
    )
    from export.runtime import select_lowest

    np.testing.assert_array_equal(got["lowest"], select_lowest(want.ids, want.scores, 20))

    dgaal = str(base_venv.parent / "dgaal")
    out = _run(
        [dgaal, "score", "--model", str(sampler_path), "--pool", str(pool), "--provider", "cpu",
         "--out", str(tmp_path / "s.csv"), "--lowest", "3"],
        cwd=tmp_path,
    )  # fmt: skip
    assert "scored 240 images" in out.stdout
    rows = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(rows[:, 0], want.ids)

    # pool embed is part of the runtime: onnxruntime and numpy, no torch, onnx or Pillow
    weights = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    encoder = uint8_encoder(tmp_path / "encoder.onnx", weights)
    out = _run([dgaal, "pool", "embed", str(pool), "--model", str(encoder), "--provider", "cpu"],
               cwd=tmp_path)  # fmt: skip
    assert "as 4-d vectors with mean-pixel" in out.stdout, out.stdout

    before = _tree_digest(tmp_path)
    cases = [
        (["round", "--pool", str(pool)], "torch"),
        (["export", "--pool", str(pool)], "torch"),
        (["pool", "create", "new.h5", "--from", "digits"], "Pillow"),
        (["generate", "--model", str(generator_path), "--pool", str(pool), "--ids", "1",
          "--out", "pngs"], "Pillow"),
    ]  # fmt: skip
    for args, package in cases:
        res = subprocess.run(
            [dgaal, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (args, res.stdout, res.stderr)
        assert f"needs {package}" in lines[0] and "pip install 'dgaal[train]'" in lines[0], lines
    assert _tree_digest(tmp_path) == before  # nothing written


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_base_install_imports_a_label_studio_export(base_venv, tmp_path):
    """``dgaal label`` needs neither torch nor Pillow: a labelling workstation can run it."""
    from dgaal_core.pool.reader import PoolReader
    from dgaal_core.pool.schema import State
    from dgaal_core.pool.writer import PoolWriter

    pool = tmp_path / "pools.h5"
    random_pool(pool, n=40)
    with PoolReader(pool) as r:
        queried = r.ids(State.UNLABELLED)[:3].tolist()
    with PoolWriter(pool) as w:
        w.set_state(queried, State.QUERIED)
        w.commit()
    export = [
        {"id": k, "data": {"image": "x", "dgaal_id": pid, "dgaal_round": 1},
         "annotations": [{"id": k, "was_cancelled": False, "result": [
             {"from_name": "label", "to_name": "image", "type": "choices",
              "value": {"choices": ["7"]}}]}]}
        for k, pid in enumerate(queried[:2])
    ]  # fmt: skip
    (tmp_path / "export.json").write_text(json.dumps(export))
    out = _run(
        [str(base_venv.parent / "dgaal"), "label", "--pool", str(pool), "export.json"], cwd=tmp_path
    )
    assert "round 1: 2 answers imported; 1 still waiting" in out.stdout
    with PoolReader(pool) as r:
        assert r.labels[queried[:2]].tolist() == [7, 7]
        assert r.states[queried].tolist() == [State.LABELLED, State.LABELLED, State.QUERIED]
