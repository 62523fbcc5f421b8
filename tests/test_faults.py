"""Faults a user's machine produces: signals, full disks, unwritable folders, corrupted bytes,
copies of a pool. Each ends a command with one line naming the cause, loses no label, and leaves
a pool the next command finishes (or ``pool check --repair`` repairs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pools import DGAAL, ENV, cli

from dgaal_core.atomic import free_bytes
from dgaal_core.loop.state import pending_round, round_records
from dgaal_core.loop.workdir import work_dir
from dgaal_core.pool.backup import backup_path
from dgaal_core.pool.check import check_pool
from dgaal_core.pool.lock import info_path
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import lock_path, shard_dir

TINY = ["--gan-steps", "8", "--task-epochs", "1", "--task-min-steps", "8", "--coevolve-steps", "2"]


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    return pool


def _healthy(pool: Path) -> None:
    """What must hold after any fault: the pool checks out, no holder is named."""
    assert not info_path(pool).exists()
    bad = [f for f in check_pool(pool) if f.status != "ok"]
    assert not bad, bad


def _after_next_commit(pool: Path, sig: int) -> threading.Thread:
    """A thread that sends ``sig`` to this process as soon as the index is replaced (a commit
    made), so the signal lands between a round's commits rather than before the first."""
    first = pool.stat().st_ino

    def watch() -> None:
        for _ in range(6000):  # at most a minute
            if pool.stat().st_ino != first:
                os.kill(os.getpid(), sig)
                return
            threading.Event().wait(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_at_random_moments_stop_a_round_with_one_line(digits: Path, sig: int) -> None:
    """Rounds sent ``sig`` (in this process, from a thread) at a seeded random moment of a
    round's length, or just after its first commit: each stops with one line and 128 + signal,
    or finishes; the pool stays healthy and the next round finishes what was interrupted."""
    rng = np.random.default_rng(sig)
    round_ = ["round", "--pool", digits, "--budget", "20", "--quiet", *TINY]
    assert cli(*round_).code == 0  # the first round in a process pays for warming up
    began = time.monotonic()
    assert cli(*round_).code == 0
    length = time.monotonic() - began  # this machine's speed, not a constant
    outcomes = {"interrupted": 0, "finished": 0, "between_commits": 0}
    ignore = signal.signal(sig, lambda *_: None)  # a signal that lands after the command: ignored
    try:
        for trial in range(20):
            if trial < 15:
                at = rng.uniform(0.02, 1.1 * length)
                timer = threading.Timer(at, os.kill, (os.getpid(), sig))
                timer.start()
            else:
                timer = _after_next_commit(digits, sig)
            try:
                ran = cli(*round_)
            finally:
                if isinstance(timer, threading.Timer):
                    timer.cancel()
                timer.join()
            if ran.code == 0:
                outcomes["finished"] += 1
            else:
                assert ran.code == 128 + sig, ran
                # The round's log goes to stderr too: the error is its one last line.
                errors = [ln for ln in ran.stderr.splitlines() if ln.startswith("error:")]
                assert len(errors) == 1 and errors[0].startswith("error: interrupted by"), ran
                assert ran.stderr.strip().endswith(errors[0]) and "Traceback" not in ran.stderr
                outcomes["interrupted"] += 1
                with PoolReader(digits) as r:
                    outcomes["between_commits"] += pending_round(r) is not None
            _healthy(digits)
    finally:
        signal.signal(sig, ignore)
    assert outcomes["interrupted"] >= 10 and outcomes["between_commits"] >= 1, outcomes
    assert cli(*round_).code == 0
    with PoolReader(digits) as r:
        assert pending_round(r) is None and len(round_records(r)) >= 3
    _healthy(digits)


# ---- corrupted bytes ----------------------------------------------------------------------------
def _flip(path: Path, seed: int, count: int = 16, start: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.integers(start, len(data), count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _rows(pool: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(pool, "r") as f:
        return {k: f[f"pool/{k}"][()] for k in ("label", "state", "round", "origin")}


@pytest.fixture
def rounded(digits: Path) -> Path:
    """The digits pool after one round (labels of two commits, generated rows)."""
    assert cli("round", "--pool", digits, "--budget", "20", "--quiet", *TINY).code == 0
    return digits


def test_a_corrupted_index_is_refused_then_rebuilt_from_its_backup(rounded: Path) -> None:
    """16 flipped bytes in the index, 20 seeds: no command reads it (HDF5 could crash on it),
    each says so in one line, and `pool check --repair` rebuilds it with every label kept."""
    want, original = _rows(rounded), rounded.read_bytes()
    for seed in range(20):
        rounded.write_bytes(original)
        _flip(rounded, seed)
        for args in (["pool", "info", rounded], ["round", "--pool", rounded, "--quiet", *TINY]):
            ran = cli(*args)
            assert ran.code == 2 and "damaged pool index" in ran.stderr, (seed, ran)
            assert len(ran.stderr.strip().splitlines()) == 1
        ran = cli("pool", "check", rounded)
        assert ran.code == 1 and "rebuild" in ran.stdout, (seed, ran.stdout)
        ran = cli("pool", "check", rounded, "--repair")
        assert ran.code == 0 and "rebuilt" in ran.stdout, (seed, ran.stdout)
        got = _rows(rounded)
        assert all(np.array_equal(got[k], want[k]) for k in want), seed
    assert cli("round", "--pool", rounded, "--budget", "20", "--quiet", *TINY).code == 0
    _healthy(rounded)


def test_corrupted_pixels_stop_a_round_with_one_line(rounded: Path) -> None:
    with PoolReader(rounded) as r:
        shard = r.shard_files()[0][0]
    before = rounded.read_bytes()
    _flip(shard, 0, start=4096)
    for args in (["pool", "info", rounded], ["round", "--pool", rounded, "--quiet", *TINY]):
        ran = cli(*args)
        assert ran.code == 2 and "checksum mismatch" in ran.stderr and shard.name in ran.stderr
    assert rounded.read_bytes() == before  # nothing was trained on them, nothing written
    ran = cli("pool", "check", rounded)
    assert ran.code == 1 and "checksum" in ran.stdout


# ---- a copy beside the original ----------------------------------------------------------------
def test_a_same_stem_copy_is_refused_and_repair_deletes_nothing(rounded: Path) -> None:
    copy = rounded.with_suffix(".hdf5")
    copy.write_bytes(rounded.read_bytes())
    shards = sorted(p.name for p in shard_dir(rounded).iterdir())
    for pool in (rounded, copy):
        ran = cli("round", "--pool", pool, "--budget", "20", "--quiet", *TINY)
        assert ran.code == 2 and "are the same pool" in ran.stderr, ran
    ran = cli("pool", "check", copy, "--repair")
    assert ran.code == 1 and "copy of this pool" in ran.stdout
    assert sorted(p.name for p in shard_dir(rounded).iterdir()) == shards  # nothing deleted
    copy.unlink()
    assert cli("round", "--pool", rounded, "--budget", "20", "--quiet", *TINY).code == 0
    _healthy(rounded)


# ---- the work folder ----------------------------------------------------------------------------
def test_a_round_in_another_work_folder_names_the_one_the_pool_used(rounded: Path) -> None:
    other = rounded.parent / "elsewhere"
    ran = cli("round", "--pool", rounded, "--workdir", other, "--quiet", *TINY)
    assert ran.code == 2 and str(work_dir(rounded).resolve()) in ran.stderr, ran
    shutil.rmtree(work_dir(rounded))  # gone for good: said, then trained again
    ran = cli("round", "--pool", rounded, "--workdir", other, "--budget", "20", "--quiet", *TINY)
    assert ran.code == 0 and "trained again from scratch" in ran.stderr, ran


# ---- full disks, read-only mounts, no permission -------------------------------------------------
@pytest.fixture
def disk(tmp_path: Path):
    """A 12 MiB tmpfs at ``tmp_path/disk`` (root can mount one; elsewhere the test is skipped),
    and a way to leave exactly ``n`` bytes of it free."""
    mount = tmp_path / "disk"
    mount.mkdir()
    ran = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True
    )
    if ran.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({ran.stderr.decode().strip()})")

    def leave_free(n: int) -> None:
        filler = mount / "filler"
        filler.unlink(missing_ok=True)
        free = free_bytes(mount)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - n))

    try:
        yield mount, leave_free
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(disk, tmp_path: Path) -> None:
    mount, leave_free = disk
    pool = mount / "p.h5"
    for free in (64 << 10, 400 << 10, 900 << 10):  # a create that cannot fit leaves nothing
        leave_free(free)
        ran = cli("pool", "create", pool, "--from", "digits")
        assert ran.code == 2 and "no space left" in ran.stderr, (free, ran)
        assert _leftovers(mount) == [] or _leftovers(mount) == ["p.h5.lock"], _leftovers(mount)
    leave_free(8 << 20)
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    labelled = _rows(pool)["state"] == 1
    outcomes = []
    for free in (8 << 10, 64 << 10, 256 << 10, 1 << 20, 2 << 20, 3 << 20):
        leave_free(free)
        ran = cli("round", "--pool", pool, "--budget", "20", "--quiet", *TINY)
        outcomes.append(ran.code)
        assert ran.code in (0, 2), ran
        if ran.code == 2:
            lines = ran.stderr.strip().splitlines()
            assert "no space left" in lines[-1] and lines[-1].startswith("error: "), ran.stderr
        state = _rows(pool)["state"]
        assert np.all(state[: labelled.size][labelled] == 1)  # no label lost
        labelled = state == 1
        assert not info_path(pool).exists()
        assert not list(mount.glob("*.tmp-*"))
    assert 2 in outcomes, outcomes
    leave_free(1 << 10)  # dgaal label on a full disk: one line, nothing changed
    before = pool.read_bytes()
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n1,1\n")
    ran = cli("label", "--pool", pool, answers)
    assert ran.code == 2 and pool.read_bytes() == before, ran
    leave_free(10 << 20)  # space again: the next round finishes what was interrupted
    assert cli("round", "--pool", pool, "--budget", "20", "--quiet", *TINY).code == 0
    _healthy(pool)


@pytest.mark.slow
def test_read_only_and_unwritable_folders_are_one_line(disk, tmp_path: Path) -> None:
    mount, _ = disk
    pool = mount / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        for args in (
            ["round", "--pool", pool, "--quiet", *TINY],
            ["label", "--pool", pool, tmp_path / "none.csv"],
            ["pool", "create", mount / "q.h5", "--from", "digits"],
        ):
            ran = cli(*args)
            assert ran.code == 2 and "read-only file system" in ran.stderr, ran
            assert len(ran.stderr.strip().splitlines()) == 1
        assert cli("pool", "info", pool).code == 0  # reading needs no write
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    folder = tmp_path / "locked"
    folder.mkdir()
    shutil.copy(pool, folder / "p.h5")
    shutil.copytree(shard_dir(pool), shard_dir(folder / "p.h5"))
    shutil.copy(backup_path(pool), backup_path(folder / "p.h5"))
    folder.chmod(0o555)
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]  # fmt: skip
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is missing: root would write anyway")
    for args in (
        ["round", "--pool", "p.h5", "--quiet", *TINY],
        ["pool", "create", "q.h5", "--from", "digits"],
    ):
        ran = subprocess.run(
            [*drop, DGAAL, *args], capture_output=True, text=True, cwd=folder, env=ENV
        )
        assert ran.returncode == 2 and "permission denied" in ran.stderr, ran.stderr
        assert len(ran.stderr.strip().splitlines()) == 1
    folder.chmod(0o755)
    lock = lock_path(folder / "p.h5")
    lock.unlink(missing_ok=True)
    lock.mkdir()
    ran = cli("round", "--pool", folder / "p.h5", "--quiet", *TINY)
    assert ran.code == 2 and "is a folder" in ran.stderr, ran


# ---- smaller ones --------------------------------------------------------------------------------
def test_odd_values_in_sources_and_pools_are_one_line(tmp_path: Path, digits: Path) -> None:
    import h5py
    from PIL import Image

    x = np.zeros((6, 8, 8), np.uint8)
    np.savez(tmp_path / "huge.npz", x_train=x, y_train=np.array([0, 1, 2, 3, 4, 10**9]))
    ran = cli("pool", "create", tmp_path / "h.h5", "--from", "npz", tmp_path / "huge.npz")
    assert ran.code == 2 and "would mean 1000000001 classes" in ran.stderr, ran
    # a refused folder ingestion leaves none of the folders it made for the pool
    for c, size in (("a", 8), ("b", 9)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (size, size)).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "new" / "deeper" / "p.h5"
    ran = cli("pool", "create", out, "--from", "folder", tmp_path / "imgs")
    assert ran.code == 2 and not (tmp_path / "new").exists(), (ran, list(tmp_path.iterdir()))
    # garbage the index seal cannot catch (a pool without a backup) is still one line
    backup_path(digits).unlink()
    with h5py.File(digits, "a") as f:
        f.attrs["version"] = "one"
    ran = cli("pool", "info", digits)
    assert ran.code == 2 and "version attribute is 'one'" in ran.stderr, ran


def test_a_shard_of_the_wrong_shape_is_one_line_where_it_is_read(
    tmp_path: Path, digits: Path
) -> None:
    import h5py

    with PoolReader(digits) as r:
        shard = r.shard_files()[0][0]
    with h5py.File(shard, "w") as f:  # same name, other image shape
        f.create_dataset("images", data=np.zeros((1438, 4, 4, 1), np.uint8))
    for args in (
        ["pool", "info", digits],
        ["export", "--pool", digits, "--untrained", "--out", tmp_path / "m"],
    ):
        ran = cli(*args)
        assert ran.code == 2 and shard.name in ran.stderr and "Traceback" not in ran.stderr, ran
