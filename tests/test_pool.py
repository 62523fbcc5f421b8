"""The pool store: schema, exact round trips, streaming reads, transactions and locking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from pools import random_pool

from dgaal_core.errors import (
    PoolExistsError,
    PoolFormatError,
    PoolLockedError,
    PoolUpdateError,
)
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.backup import backup_path
from dgaal_core.pool.check import check_pool
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import FORMAT, VERSION, Origin, State, shard_dir
from dgaal_core.pool.shards import file_sha256
from dgaal_core.pool.writer import PoolBuilder, PoolWriter

CLASSES = [str(i) for i in range(10)]


def make_pool(path: Path, n: int = 300, shape=(8, 8, 1), test: int = 40, initial=0.1, seed=0):
    images = random_pool(path, shape, n, seed, initial=initial, test=test, batch=64)
    return images, np.arange(n) % 10


def test_schema_attrs_and_virtual_images_readable_by_plain_h5py(tmp_path):
    images, _ = make_pool(tmp_path / "pools.h5", shape=(6, 5, 3))
    with h5py.File(tmp_path / "pools.h5", "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["version"] == VERSION
        assert list(f.attrs["image_shape"]) == [6, 5, 3]
        assert f.attrs["num_classes"] == 10
        # any HDF5 reader sees one [N, H, W, C] array through the virtual dataset
        np.testing.assert_array_equal(f["pool/images"][()], images)
        assert f["pool/images"].dtype == np.uint8
        for name in ("label", "state", "origin", "parent", "depth", "round", "truth"):
            assert f["pool"][name].shape == (300,)
        assert f["test/images"].shape == (40, 6, 5, 3)


def test_images_round_trip_exactly_in_any_order(tmp_path):
    images, truth = make_pool(tmp_path / "p.h5", n=5000, shape=(4, 4, 3))
    rng = np.random.default_rng(1)
    with PoolReader(tmp_path / "p.h5") as r:
        ids = rng.choice(5000, 700)  # repeats and any order
        np.testing.assert_array_equal(r.read_images(ids), images[ids])
        seen = []
        for b_ids, b_imgs in r.iter_batches(r.ids(State.UNLABELLED), batch_size=97):
            assert np.all(np.diff(b_ids) > 0)
            np.testing.assert_array_equal(b_imgs, images[b_ids])
            seen.append(b_ids)
        np.testing.assert_array_equal(np.concatenate(seen), r.ids(State.UNLABELLED))
        np.testing.assert_array_equal(r.read_truth([3, 4]), truth[[3, 4]])
        test_x, test_y = r.read_test()
        np.testing.assert_array_equal(test_x, images[:40])
        np.testing.assert_array_equal(test_y, truth[:40])


def test_initial_set_is_stratified_fraction_or_count(tmp_path):
    make_pool(tmp_path / "p.h5", n=300, initial=0.1)
    with PoolReader(tmp_path / "p.h5") as r:
        lab = r.ids(State.LABELLED)
        assert lab.size == 30
        assert np.bincount(r.labels[lab], minlength=10).tolist() == [3] * 10
        assert np.all(r.labels[r.ids(State.UNLABELLED)] == -1)
        assert np.all(r.fields["round"][lab] == 0)
    truth = np.repeat(np.arange(3), [50, 30, 20])
    chosen = choose_initial(truth, 10, np.random.default_rng(0))
    assert np.bincount(truth[chosen]).tolist() == [5, 3, 2]
    again = choose_initial(truth, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, again)  # the seed decides


def test_writer_commit_appends_generated_rows_with_lineage(tmp_path):
    path = tmp_path / "p.h5"
    _images, truth = make_pool(path)
    new = np.full((3, 8, 8, 1), 7, np.uint8)
    with PoolWriter(path) as w:
        ids = w.append(new, labels=truth[[0, 1, 2]], parents=np.array([0, 1, 2]))
        w.set_state([5, 6], State.LABELLED, round_no=1)
        w.set_labels([5, 6], [5, 6])
        w.append_round({"round": 1, "strategy": "test"})
        w.commit()
        grand = w.append(new[:1], labels=truth[[0]], parents=ids[:1])
        w.commit()
    with PoolReader(path) as r:
        assert r.num_rows == 304
        np.testing.assert_array_equal(r.read_images([300, 303]), np.stack([new[0], new[0]]))
        assert r.fields["origin"][300:].tolist() == [Origin.GENERATED] * 4
        assert r.fields["parent"][300:].tolist() == [0, 1, 2, 300]
        assert r.fields["depth"][300:].tolist() == [1, 1, 1, 2]
        assert r.labels[grand].tolist() == [truth[0]]
        assert r.rounds() == [{"round": 1, "strategy": "test"}]
        assert r.summary()["generated"] == 4 and r.summary()["labelled"] == 32


def test_uncommitted_changes_are_discarded_with_their_shards(tmp_path):
    path = tmp_path / "p.h5"
    make_pool(path)
    before = sorted(p.name for p in shard_dir(path).iterdir())
    with pytest.raises(RuntimeError), PoolWriter(path) as w:
        w.append(np.zeros((2, 8, 8, 1), np.uint8))
        w.set_state([0], State.EXCLUDED)
        raise RuntimeError("boom")
    assert sorted(p.name for p in shard_dir(path).iterdir()) == before
    with PoolReader(path) as r:
        assert r.num_rows == 300 and r.states[0] != State.EXCLUDED


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: w.set_state([300], State.LABELLED), "ids must lie in"),
        (lambda w: w.set_state([1, 1], State.LABELLED), "duplicates"),
        (lambda w: w.set_labels([1], [10]), "labels must be"),
        (lambda w: w.append(np.zeros((1, 8, 8, 3), np.uint8)), "images must be uint8"),
        (lambda w: w.append(np.zeros((1, 8, 8, 1), np.uint8), parents=np.array([999])), "parents"),
    ],
)
def test_invalid_updates_raise_named_errors(tmp_path, mutate, message):
    make_pool(tmp_path / "p.h5")
    with PoolWriter(tmp_path / "p.h5") as w, pytest.raises(PoolUpdateError, match=message):
        mutate(w)


def test_create_refuses_existing_pool_unless_forced_and_cleans_old_shards(tmp_path):
    path = tmp_path / "p.h5"
    make_pool(path)
    old = {p.name for p in shard_dir(path).iterdir()}
    with pytest.raises(PoolExistsError, match="already exists"):
        make_pool(path)
    with PoolBuilder(path, (8, 8, 1), CLASSES, force=True) as b:
        b.add(np.zeros((5, 8, 8, 1), np.uint8))
        b.finish()
    with PoolReader(path) as r:
        assert r.num_rows == 5 and not r.has_truth
    assert not old & {p.name for p in shard_dir(path).iterdir()}


def test_pools_sharing_a_shard_folder_never_delete_each_others_shards(tmp_path):
    a, b = tmp_path / "pools.h5", tmp_path / "pools.hdf5"  # one stem: one pools.shards/
    images_a, _ = make_pool(a, n=50, seed=1)
    images_b, _ = make_pool(b, n=70, seed=2)
    with PoolWriter(a) as w:  # a writer of one pool removes orphans: only its own
        w.append(images_a[:3], parents=np.arange(3))
        w.commit()
    with PoolReader(a) as ra, PoolReader(b) as rb:
        assert ra.pool_id != rb.pool_id
        ra.check_shards()
        rb.check_shards()
        np.testing.assert_array_equal(ra.read_images(np.arange(50)), images_a)
        np.testing.assert_array_equal(rb.read_images(np.arange(70)), images_b)
    # --force replaces a pool and removes its shards, not the neighbour's
    with PoolBuilder(a, (8, 8, 1), CLASSES, force=True) as builder:
        builder.add(np.zeros((5, 8, 8, 1), np.uint8))
        builder.finish()
    with PoolReader(a) as ra, PoolReader(b) as rb:
        assert ra.num_rows == 5
        rb.check_shards()
        np.testing.assert_array_equal(rb.read_images(np.arange(70)), images_b)
        mine = {s.name for s in ra.pool_shards} | {s.name for s in rb.pool_shards}
        mine |= {s.name for s in rb.test_shards}
    assert {p.name for p in shard_dir(a).iterdir()} == mine


def test_a_pool_made_before_pool_ids_stays_readable_and_gets_an_id(tmp_path):
    path = tmp_path / "p.h5"
    images, _ = make_pool(path, n=30, test=0)
    backup_path(path).unlink()  # as written before ids (and backups) existed
    with h5py.File(path, "a") as f:
        del f.attrs["pool_id"]
    stray = shard_dir(path) / "pool-0123456789abcdef.h5"  # an old, untagged orphan: whose?
    stray.write_bytes(b"")
    with PoolReader(path) as r:
        assert r.pool_id is None
        np.testing.assert_array_equal(r.read_images(np.arange(30)), images)
    with PoolWriter(path) as w:
        w.append(images[:2], parents=np.arange(2))
        w.commit()
    with PoolReader(path) as r:
        assert r.pool_id is not None and r.num_rows == 32
        r.check_shards()
        assert r.pool_shards[-1].name.startswith(f"pool-{r.pool_id}-")
    assert stray.exists()


def test_failed_create_leaves_nothing(tmp_path):
    path = tmp_path / "p.h5"
    with pytest.raises(PoolUpdateError), PoolBuilder(path, (8, 8, 1), CLASSES) as b:
        b.add(np.zeros((5, 8, 8, 1), np.uint8), truth=np.array([0, 1, 2, 3, 11]))
    assert not path.exists()
    assert not any(shard_dir(path).glob("*.h5"))


def test_open_checks_format_version_and_shards(tmp_path):
    bad = tmp_path / "not.h5"
    bad.write_text("hello")
    with pytest.raises(PoolFormatError, match="not an HDF5 file"):
        PoolReader(bad)
    with pytest.raises(PoolFormatError, match="no such pool file"):
        PoolReader(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(PoolFormatError, match="not a dgaal pool"):
        PoolReader(other)
    path = tmp_path / "p.h5"
    make_pool(path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = VERSION + 1
    with pytest.raises(PoolFormatError, match="damaged pool index"):  # not what dgaal wrote
        PoolReader(path)
    backup_path(path).unlink()  # without a backup to compare with, the version decides
    with pytest.raises(PoolFormatError, match="version"):
        PoolReader(path)
    path2 = tmp_path / "q.h5"
    make_pool(path2)
    next(shard_dir(path2).glob("pool-*.h5")).unlink()
    with PoolReader(path2) as r, pytest.raises(PoolFormatError, match="missing"):
        r.read_images([0])


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np
    from dgaal_core.pool.writer import PoolWriter
    from dgaal_core.pool.schema import State
    path, hold = sys.argv[1], float(sys.argv[2])
    with PoolWriter(path, purpose="test-writer") as w:
        print("locked", flush=True)
        if hold:
            time.sleep(hold)
        # each commit k: append 4 images of value k as children of rows 0..3, label row k
        for k in range(len(w.rounds()) + 1, 100_000):
            w.append(np.full((4, 8, 8, 1), k % 256, np.uint8), labels=np.full(4, k % 10),
                     parents=np.arange(4))
            w.set_state([k % 300], State.LABELLED, round_no=k % 30000)
            w.set_labels([k % 300], [k % 10])
            w.append_round({"round": k})
            w.commit()
    """
)


def _start_writer(path: Path, hold: float = 0.0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _check_consistent(path: Path, committed_before: int) -> int:
    """The pool opens and is exactly the state after some number k of whole commits."""
    with PoolReader(path) as r:
        r.check_shards()
        k = len(r.rounds())
        assert k >= committed_before  # committed state is never lost
        assert [x["round"] for x in r.rounds()] == list(range(1, k + 1))
        assert r.num_rows == 300 + 4 * k
        gen = np.arange(300, r.num_rows)
        if k:
            imgs = r.read_images(gen)
            expect = np.repeat(np.arange(1, k + 1) % 256, 4).astype(np.uint8)
            np.testing.assert_array_equal(imgs[:, 0, 0, 0], expect)
            assert np.all(r.fields["depth"][gen] == 1)
            np.testing.assert_array_equal(r.labels[gen], np.repeat(np.arange(1, k + 1) % 10, 4))
        for j in range(1, k + 1):  # every label revealed by a commit is still there
            assert r.states[j % 300] == State.LABELLED
        return k


@pytest.mark.slow
def test_kill_9_during_updates_always_leaves_old_or_new_state(tmp_path):
    path = tmp_path / "p.h5"
    make_pool(path, initial=0)
    rng = np.random.default_rng(0)
    committed = 0
    for _trial in range(25):
        proc = _start_writer(path)
        try:
            proc.wait(timeout=float(rng.uniform(0.0, 0.15)))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no cleanup, no flush
        proc.wait()
        committed = _check_consistent(path, committed)
        # the next writer opens it, removes orphans and commits on top
        with PoolWriter(path) as w:
            w.commit()
        with h5py.File(path, "r") as f:
            names = {n for n, _ in json.loads(f.attrs["pool_shards"])}
            names |= {n for n, _ in json.loads(f.attrs["test_shards"])}
        assert {p.name for p in shard_dir(path).iterdir()} == names  # no orphans left
        assert not list(tmp_path.glob("p.h5.tmp-*"))
    assert committed > 0, "no trial got as far as a commit; the test did not test anything"


def test_second_writer_fails_at_once_naming_the_holder_and_readers_still_read(tmp_path):
    path = tmp_path / "p.h5"
    make_pool(path)
    proc = _start_writer(path, hold=30)
    try:
        with pytest.raises(PoolLockedError, match=rf"test-writer.*pid {proc.pid}"):
            PoolWriter(path).__enter__()
        with pytest.raises(PoolLockedError):
            PoolBuilder(path, (8, 8, 1), CLASSES, force=True).__enter__()
        with PoolReader(path) as r:  # readers never block
            assert r.num_rows == 300
    finally:
        proc.kill()
        proc.wait()
    with PoolWriter(path) as w:  # the OS released the dead holder's lock
        w.commit()


def test_garbage_in_an_attribute_is_a_named_error_and_shards_carry_checksums(tmp_path):
    path = tmp_path / "p.h5"
    make_pool(path, n=30, test=0)
    with PoolWriter(path) as w:
        w.append(np.zeros((2, 8, 8, 1), np.uint8), parents=np.arange(2))
        w.commit()
    with PoolReader(path) as r:  # every shard is sealed with its SHA-256 when written
        names = [s.name for s in r.pool_shards]
        assert len(names) == 2 and sorted(r.shard_sha256) == sorted(names)
        assert r.shard_sha256[names[1]] == file_sha256(shard_dir(path) / names[1])
    backup_path(path).unlink()  # no backup to hold the index to: the attributes are parsed
    with h5py.File(path, "a") as f:
        f.attrs["meta"] = "{not json"
    with pytest.raises(PoolFormatError, match="does not parse"):
        PoolReader(path)


DGAAL = shutil.which("dgaal", path=str(Path(sys.executable).parent)) or "dgaal"


def _seen(path: Path) -> tuple:
    """What a user of the pool at ``path`` sees: its id, ``pool info --json``, every image."""
    with PoolReader(path) as r:
        r.check_shards()
        return r.pool_id, r.summary(), r.read_images(np.arange(r.num_rows)), r.read_test()[0]


@pytest.mark.slow
def test_kill_9_during_create_force_keeps_the_old_pool_until_the_new_one_is_complete(tmp_path):
    new = np.random.default_rng(1).integers(0, 256, (100_000, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "new.npz", x_train=new, y_train=np.arange(100_000) % 10)
    path = tmp_path / "p.h5"
    make_pool(path, n=300)

    def create(out: Path) -> subprocess.Popen:
        args = ["pool", "create", str(out), "--from", "npz", str(tmp_path / "new.npz"), "--force"]
        return subprocess.Popen(
            [DGAAL, *args, "--batch-size", "512"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def writing(proc: subprocess.Popen, folder: Path) -> float:
        """Wait until ``proc`` has started a new shard in ``folder``; returns the time then."""
        known = {p.name for p in folder.iterdir()} if folder.exists() else set()
        while proc.poll() is None:
            if folder.exists() and {p.name for p in folder.iterdir()} - known:
                break
            time.sleep(0.002)
        return time.perf_counter()

    t0 = time.perf_counter()  # how long one create takes here, and how long it writes
    proc = create(tmp_path / "timing.h5")
    t_write = writing(proc, shard_dir(tmp_path / "timing.h5"))
    assert proc.wait(timeout=120) == 0
    took, writes = time.perf_counter() - t0, time.perf_counter() - t_write
    rng = np.random.default_rng(0)
    outcomes = []
    for trial in range(6):
        before = _seen(path)
        proc = create(path)
        if trial < 2:  # at any moment
            delay = float(rng.uniform(0.0, 1.0)) * took
        else:  # while it writes its shard: the moment that matters
            writing(proc, shard_dir(path))
            delay = float(rng.uniform(0.0, 1.0)) * writes
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no cleanup
        proc.wait()
        after = _seen(path)
        if after[0] == before[0]:  # the old pool, exactly as it was
            assert after[1] == before[1]
            np.testing.assert_array_equal(after[2], before[2])
            np.testing.assert_array_equal(after[3], before[3])
            outcomes.append("old")
        else:  # or the new one, complete
            assert after[1]["images"] == 100_000
            np.testing.assert_array_equal(after[2], new)
            outcomes.append("new")
        damaged = [f for f in check_pool(path) if f.damaged and f.check != "orphans"]
        assert not damaged, damaged
    assert "old" in outcomes, "every create finished: the test did not test anything"
    with PoolWriter(path) as w:  # the next writer works on whichever it is, and deletes the
        w.commit()  # shards a killed create left (their id was never published)
    with PoolReader(path) as r:
        mine = {s.name for s in r.pool_shards} | {s.name for s in r.test_shards}
    assert {p.name for p in shard_dir(path).iterdir()} == mine
