"""The onnxruntime side: torch-free import, pool scoring, selection, generation, bad inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pools import export_untrained, random_pool

from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from export import names
from export.errors import ModelFileError, ModelMismatchError, ProviderError
from export.runtime import GeneratorSession, SamplerSession, parse_state, select_lowest
from export.sessions import cuda_device_count, physical_cores, resolve_provider

SHAPE = (8, 8, 1)
ROOT = Path(__file__).resolve().parents[1]


make_pool = random_pool


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    images = make_pool(d / "pools.h5")
    sampler, generator = export_untrained(d / "out", images)
    return d / "pools.h5", images, sampler, generator


def test_runtime_imports_and_scores_without_torch(env):
    pool, _, sampler_path, generator_path = env
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from export.runtime import GeneratorSession, SamplerSession, select_lowest
        import export.sessions, export.names, export.errors, export.triton, export.cascade
        import cli.score_cmd, cli.generate_cmd  # the serving commands run without torch too
        s = SamplerSession({str(sampler_path)!r}, provider="cpu")
        r = s.score_pool({str(pool)!r})
        g = GeneratorSession({str(generator_path)!r}, provider="cpu")
        out = g.generate_pool({str(pool)!r}, [1, 2], g.draw_noise_scales(0))
        assert out.shape == (2, 8, 8, 1)
        print(r.ids.size, select_lowest(r.ids, r.scores, 3).tolist())
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "560"  # 80% of 700 rows are candidates


def test_score_pool_streams_candidates_and_matches_direct_scoring(env):
    pool, images, sampler_path, _ = env
    s = SamplerSession(sampler_path, provider="cpu")
    calls = []
    res = s.score_pool(pool, batch_size=64, progress=lambda d, t: calls.append((d, t)))
    with PoolReader(pool) as r:
        want_ids = r.ids(State.UNLABELLED)
    np.testing.assert_array_equal(res.ids, want_ids)
    direct, _ = s.score(images[want_ids])
    np.testing.assert_allclose(res.scores, direct, atol=1e-6)
    assert calls[0] == (0, want_ids.size) and calls[-1] == (want_ids.size, want_ids.size)
    assert res.latents is None and res.images_per_second > 0

    every = s.score_pool(pool, state=None, batch_size=100, prefetch=0, return_latents=True)
    assert every.ids.size == 700 and every.latents is not None
    assert every.latents.shape == (700, s.info.z_dim)
    some = s.score_pool(pool, ids=[5, 3, 3, 699])
    assert some.ids.tolist() == [3, 5, 699]
    np.testing.assert_allclose(some.scores, every.scores[[3, 5, 699]], atol=1e-6)


def test_select_lowest_is_deterministic_with_ties_by_id():
    ids = np.array([9, 4, 7, 1, 3])
    scores = np.array([0.5, 0.1, 0.1, 0.9, np.nan], dtype=np.float32)
    assert select_lowest(ids, scores, 3).tolist() == [4, 7, 9]
    perm = np.array([3, 0, 4, 2, 1])
    assert select_lowest(ids[perm], scores[perm], 3).tolist() == [4, 7, 9]
    assert select_lowest(ids, scores, 10).tolist() == [4, 7, 9, 1, 3]  # NaN last
    assert select_lowest(ids, scores, 0).size == 0
    tied = np.zeros(6, np.float32)
    assert select_lowest(np.array([5, 2, 4, 0, 3, 1]), tied, 2).tolist() == [0, 1]
    with pytest.raises(ValueError):
        select_lowest(ids, scores[:2], 1)


def test_generator_noise_scales_and_generation(env):
    pool, images, _, generator_path = env
    g = GeneratorSession(generator_path, provider="cpu")
    a, b = g.draw_noise_scales(7), g.draw_noise_scales(np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (g.noise_channels,)
    assert np.all((a >= 0.95) & (a <= 1.05))
    out = g.generate_pool(pool, [10, 3, 10], a)
    np.testing.assert_array_equal(out, g.generate(images[[10, 3, 10]], a))
    assert out.dtype == np.uint8 and out.shape == (3, *SHAPE)
    # noise_scales is a real graph input (not folded into a constant)
    big = np.full_like(a, 200.0)
    assert not np.array_equal(g.generate(images[:4], a), g.generate(images[:4], big))
    with pytest.raises(Exception, match="noise_scales"):
        g.generate(images[:2], a[:-1])


def test_physical_cores_count_smt_siblings_once(monkeypatch):
    import export.sessions as sessions

    # 2 sockets x 2 cores x 2 hyper-threads; this process may run on CPUs 0-5
    cpus = [{"processor": str(i), "physical id": str(i // 4), "core id": str(i // 2 % 2)}
            for i in range(8)]  # fmt: skip
    monkeypatch.setattr(sessions, "_processors", lambda: tuple(cpus))
    monkeypatch.setattr(sessions.os, "sched_getaffinity", lambda _pid: set(range(6)), raising=False)
    assert physical_cores() == 3  # cores (0,0), (0,1), (1,0)
    monkeypatch.setattr(sessions, "_processors", lambda: ())  # no /proc/cpuinfo: logical CPUs
    assert physical_cores() == 6
    cpus[0] = {"processor": "x", "core id": "0"}  # garbage: the logical count
    monkeypatch.setattr(sessions, "_processors", lambda: tuple(cpus))
    assert physical_cores() == 6


def test_providers_and_threads():
    assert resolve_provider("cpu") == "cpu"
    with pytest.raises(ProviderError, match="expected one of"):
        resolve_provider("tpu")
    if cuda_device_count() == 0:
        assert resolve_provider("auto") == "cpu"
        with pytest.raises(ProviderError, match=r"use provider='cpu' \(`--provider cpu`"):
            resolve_provider("cuda")


def test_parse_state():
    assert parse_state("unlabelled") is State.UNLABELLED
    assert parse_state("all") is None and parse_state(None) is None
    with pytest.raises(Exception, match="--state"):
        parse_state("candidates")


def _plain_onnx(path: Path) -> None:
    node = helper.make_node("Identity", ["images"], ["score"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))


def test_bad_model_files(env, tmp_path):
    _, _, sampler_path, generator_path = env
    with pytest.raises(ModelFileError, match="no such file"):
        SamplerSession(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="is a directory"):
        SamplerSession(tmp_path)
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        SamplerSession(tmp_path / "notes.onnx")
    _plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="without dgaal metadata"):
        SamplerSession(tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="a dgaal generator model, expected a sampler"):
        SamplerSession(generator_path)
    with pytest.raises(ModelFileError, match="expected a generator"):
        GeneratorSession(sampler_path)
    model = onnx.load(str(sampler_path))
    for p in model.metadata_props:
        if p.key == names.META_FORMAT:
            p.value = "99"
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(ModelFileError, match="format 99"):
        SamplerSession(tmp_path / "future.onnx")


def test_model_pool_mismatch(env, tmp_path):
    _, _, sampler_path, generator_path = env
    make_pool(tmp_path / "rgb.h5", shape=(8, 8, 3), n=20)
    make_pool(tmp_path / "big.h5", shape=(16, 16, 1), n=20)
    s = SamplerSession(sampler_path, provider="cpu")
    with pytest.raises(ModelMismatchError, match=r"1 channel\(s\), pool has 3"):
        s.score_pool(tmp_path / "rgb.h5")
    with pytest.raises(ModelMismatchError, match="8x8, pool has 16x16"):
        s.score_pool(tmp_path / "big.h5")
    with pytest.raises(ModelMismatchError):
        GeneratorSession(generator_path, provider="cpu").generate_pool(
            tmp_path / "rgb.h5", [0], np.ones(1)
        )
    with pytest.raises(ModelMismatchError, match="expected uint8"):
        s.score(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ModelMismatchError, match="expected uint8"):
        s.score(np.zeros((2, 8, 8, 3), np.uint8))


def test_auto_falls_back_to_cpu_when_cuda_provider_cannot_load(env, monkeypatch):
    """libcuda answers but the CUDA provider cannot load (here: no CUDA libraries at all).

    "auto" runs on the CPU with one warning and scores like a CPU session; "cuda" fails."""
    import onnxruntime as ort

    import export.sessions as sessions

    _, images, sampler_path, generator_path = env
    if sessions.cuda_device_count() > 0:
        pytest.skip("a real CUDA device: the fallback cannot be provoked here")
    monkeypatch.setattr(sessions, "cuda_device_count", lambda: 1)
    if sessions.CUDA_EP not in ort.get_available_providers():  # a CPU-only onnxruntime build
        monkeypatch.setattr(ort, "get_available_providers", lambda: [sessions.CUDA_EP, "CPU"])
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        s = SamplerSession(sampler_path, provider="auto")
    assert s.provider == "cpu" and not s.io_binding
    want, _ = SamplerSession(sampler_path, provider="cpu").score(images[:50])
    np.testing.assert_array_equal(s.score(images[:50])[0], want)
    with pytest.warns(RuntimeWarning, match="no device 3"):
        assert GeneratorSession(generator_path, provider="auto", device_id=3).provider == "cpu"
    with pytest.raises(ProviderError, match="CUDA execution provider failed to load"):
        SamplerSession(sampler_path, provider="cuda")
    with pytest.raises(ProviderError, match="no device 3"):
        SamplerSession(sampler_path, provider="cuda", device_id=3)
    with pytest.raises(ProviderError, match="device_id"):
        SamplerSession(sampler_path, provider="cpu", device_id=-1)


def test_caller_session_options_and_no_import_side_effects(env):
    import onnxruntime as ort

    _, images, sampler_path, _ = env
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = SamplerSession(sampler_path, provider="cpu", options=so)
    assert s.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(
        s.score(images[:20])[0], SamplerSession(sampler_path, provider="cpu").score(images[:20])[0]
    )
    code = textwrap.dedent(
        """
        import os, sys, warnings, logging
        import numpy, onnxruntime, h5py  # their own import-time effects are not dgaal's
        env, filters, handlers = dict(os.environ), list(warnings.filters), logging.root.handlers[:]
        import export.runtime, export.sessions
        assert dict(os.environ) == env, "environment changed"
        assert list(warnings.filters) == filters and logging.root.handlers == handlers
        assert export.sessions.cuda_device_count.cache_info().currsize == 0, "CUDA probed"
        assert "torch" not in sys.modules
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
