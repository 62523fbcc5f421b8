"""Scoring and generation on Ray Data (``--engine ray``): a local Ray with 2 CPUs and a two-node
``ray.cluster_utils.Cluster`` give exactly the local runtime's scores, lowest-N and images; a
killed actor is replaced and the result still matches; a missing or corrupt shard is one error
naming the node and the shard. Every Ray run here is bounded in time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pools import export_untrained, random_pool, uint8_encoder

from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.writer import PoolWriter
from export.distributed import (
    RayEngineError,
    RayOptions,
    generate_images_ray,
    generate_pool_ray,
    score_pool_ray,
)
from export.runtime import GeneratorSession, SamplerSession, select_lowest

ray = pytest.importorskip("ray")  # `make test` installs dgaal[ray]; CI has it
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 3)


def sharded_pool(path: Path, n: int = 900) -> np.ndarray:
    """A pool whose rows span two shards (the second appended as x_g would be)."""
    images = random_pool(path, shape=SHAPE, n=n)
    extra = np.random.default_rng(5).integers(0, 256, (300, *SHAPE), dtype=np.uint8)
    with PoolWriter(path) as w:
        w.append(extra, labels=np.zeros(300, np.int32), parents=np.arange(300))
        w.commit()
    with PoolReader(path) as r:
        assert len(r.shard_files()) == 2
    return np.concatenate([images, extra])


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield RayOptions(rows_per_task=128, batch_size=64, stall_timeout_s=120)
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    images = sharded_pool(d / "pools.h5")
    sampler, generator = export_untrained(d / "model", images)
    return d / "pools.h5", images, sampler, generator


def test_ray_scores_and_lowest_n_equal_the_local_runtime(local_ray, models):
    pool, _, sampler_path, _ = models
    local = SamplerSession(sampler_path, provider="cpu").score_pool(pool, state=None)
    calls: list[tuple[int, int]] = []
    res = score_pool_ray(
        sampler_path,
        pool,
        state=None,
        options=local_ray,
        progress=lambda d, t: calls.append((d, t)),
    )
    np.testing.assert_array_equal(res.ids, local.ids)
    np.testing.assert_array_equal(res.scores, local.scores)
    np.testing.assert_array_equal(
        select_lowest(res.ids, res.scores, 50), select_lowest(local.ids, local.scores, 50)
    )
    assert calls[0] == (0, 1200) and calls[-1] == (1200, 1200)
    some = score_pool_ray(sampler_path, pool, ids=[1199, 3, 899, 900, 3], options=local_ray)
    assert some.ids.tolist() == [3, 899, 900, 1199]
    np.testing.assert_array_equal(some.scores, local.scores[[3, 899, 900, 1199]])
    cands = score_pool_ray(sampler_path, pool, options=local_ray)  # default: unlabelled rows
    want = SamplerSession(sampler_path, provider="cpu").score_pool(pool)
    np.testing.assert_array_equal(cands.ids, want.ids)


def test_ray_generation_equals_the_local_runtime(local_ray, models):
    pool, images, _, generator_path = models
    g = GeneratorSession(generator_path, provider="cpu")
    noise = g.draw_noise_scales(4)
    ids = np.array([1100, 2, 900, 2, 45])
    np.testing.assert_array_equal(
        generate_pool_ray(generator_path, pool, ids, noise, local_ray),
        g.generate_pool(pool, ids, noise),
    )
    batch = images[[7, 1000, 3]]
    np.testing.assert_array_equal(
        generate_images_ray(generator_path, batch, noise, local_ray), g.generate(batch, noise)
    )


def test_ray_embeddings_equal_the_local_ones(local_ray, models, tmp_path):
    """`pool embed --engine ray` writes the same embeddings as the local runtime (both
    shards of the pool), and a round's catch-up later embeds like either."""
    from dgaal_core.pool.check import check_pool
    from dgaal_core.pool.embeddings import open_embeddings
    from export.embed import embed_pool

    pool, _, _, _ = models
    shutil.copytree(pool.parent, tmp_path / "c")  # the module's pool stays as it is
    copy = tmp_path / "c" / pool.name
    weights = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
    model = uint8_encoder(tmp_path / "e.onnx", weights)
    embed_pool(copy, model, provider="cpu")
    local = open_embeddings(copy)
    assert local is not None
    want = local.split("pool").copy()
    embed_pool(copy, model, provider="cpu", ray=local_ray)
    ray_emb = open_embeddings(copy)
    assert ray_emb is not None and ray_emb.rows("pool") == want.shape[0] == 1200
    np.testing.assert_array_equal(ray_emb.split("pool"), want)
    found = {f.check: f for f in check_pool(copy)}["embeddings"]
    assert found.status == "ok" and "6-d from mean-pixel" in found.detail


def test_sizing_leaves_a_cpu_for_the_reads(local_ray, models):
    pool, _, sampler_path, _ = models
    with pytest.raises(RayEngineError, match="at most 1 actor"):
        score_pool_ray(sampler_path, pool, options=RayOptions(workers=2))
    with pytest.raises(RayEngineError, match="--workers"):
        RayOptions(workers=0).check()


def test_missing_or_corrupt_shard_is_one_error_and_nothing_written(local_ray, models, tmp_path):
    pool, _, sampler_path, _ = models
    copy = tmp_path / "pools.h5"
    shutil.copy(pool, copy)
    shutil.copytree(pool.with_name("pools.shards"), tmp_path / "pools.shards")
    with PoolReader(copy) as r:
        second = r.shard_files()[1][0]
    before = copy.read_bytes()
    second.write_bytes(b"not hdf5 at all")  # corrupt
    with pytest.raises(RayEngineError, match=r"node \S+ cannot open shard .*same path"):
        score_pool_ray(sampler_path, copy, state=None, options=local_ray)
    second.unlink()  # missing
    with pytest.raises(RayEngineError, match=f"cannot open shard {second}"):
        score_pool_ray(sampler_path, copy, state=None, options=local_ray)
    assert copy.read_bytes() == before
    # the failed runs released their actors: the next run in this process does not stall
    ok = score_pool_ray(sampler_path, pool, ids=[1, 2], options=local_ray)
    assert ok.ids.tolist() == [1, 2]


def _actor_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"MapBatches(_ScoreActor)" in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor in /proc")
def test_a_killed_actor_is_replaced_and_the_scores_still_match(local_ray, tmp_path):
    pool = tmp_path / "big.h5"
    images = random_pool(pool, shape=SHAPE, n=12000)
    sampler_path, _ = export_untrained(tmp_path / "model", images)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in _actor_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    opts = RayOptions(rows_per_task=256, batch_size=32, stall_timeout_s=120)
    res = score_pool_ray(sampler_path, pool, state=None, options=opts)
    t.join(timeout=5)
    assert killed, "the actor was never seen"
    local = SamplerSession(sampler_path, provider="cpu").score_pool(pool, state=None)
    np.testing.assert_array_equal(res.ids, local.ids)
    np.testing.assert_array_equal(res.scores, local.scores)


def test_a_two_node_cluster_gives_the_same_scores(models):
    from ray.cluster_utils import Cluster

    pool, _, sampler_path, generator_path = models
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        opts = RayOptions(
            address=cluster.address, rows_per_task=100, batch_size=50, stall_timeout_s=120
        )
        res = score_pool_ray(sampler_path, pool, state=None, options=opts)
        assert len(ray.nodes()) == 2
        local = SamplerSession(sampler_path, provider="cpu").score_pool(pool, state=None)
        np.testing.assert_array_equal(res.scores, local.scores)
        g = GeneratorSession(generator_path, provider="cpu")
        noise = g.draw_noise_scales(1)
        np.testing.assert_array_equal(
            generate_pool_ray(generator_path, pool, [5, 1000], noise, opts),
            g.generate_pool(pool, [5, 1000], noise),
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_engine_ray_without_ray_is_one_line(models, tmp_path):
    pool, _, sampler_path, _ = models
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from cli.main import app\n"
        f"app(['score', '--model', {str(sampler_path)!r}, '--pool', {str(pool)!r},"
        " '--engine', 'ray'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        "error: --engine ray needs Ray Data (ray[data]>=2.40,<3): pip install 'dgaal[ray]'"
    )


def test_round_engine_ray_end_to_end_equals_the_local_round(tmp_path):
    """The real console script: one round with --engine ray and one local, from the same pool."""
    dgaal = shutil.which("dgaal", path=str(Path(sys.executable).parent)) or "dgaal"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fast = ["--gan-steps", "6", "--task-epochs", "1", "--task-min-steps", "0", "--budget", "40",
            "--quiet"]  # fmt: skip
    pools = []
    for name, engine in (("local", []), ("ray", ["--engine", "ray", "--workers", "1"])):
        pool = tmp_path / name / "pools.h5"
        pool.parent.mkdir()
        for args in (
            ["pool", "create", str(pool), "--from", "digits", "--initial", "0.1", "--seed", "1"],
            ["round", "--pool", str(pool), *fast, *engine],
        ):
            res = subprocess.run(
                [dgaal, *args], capture_output=True, text=True, env=env, timeout=300
            )
            assert res.returncode == 0, f"{args}\n{res.stdout}\n{res.stderr}"
            # a healthy run shows dgaal's lines, not Ray's own warnings and INFO lines
            assert "Token authentication" not in res.stderr, res.stderr
            assert "Started a local Ray instance" not in res.stderr, res.stderr
        pools.append(pool)
    with PoolReader(pools[0]) as a, PoolReader(pools[1]) as b:
        assert a.num_rows == b.num_rows > 1438  # x_g were appended
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(
            a.read_images(np.arange(a.num_rows)), b.read_images(np.arange(b.num_rows))
        )
        ra, rb = a.rounds()[-1], b.rounds()[-1]
        assert ra["accuracy"] == rb["accuracy"] and ra["d1_auc"] == rb["d1_auc"]
