"""``dgaal pool check [--repair]``: one tiny pool, damaged one way per test through the file
system or h5py, found with exit 1 and the right check named; --repair fixes what it may."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from pools import class_images
from typer.testing import CliRunner

from cli.main import app
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.backup import backup_path
from dgaal_core.pool.check import CHECKS, check_pool
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State, shard_dir
from dgaal_core.pool.writer import PoolBuilder, PoolWriter

runner = CliRunner()
ROUND_1 = [10, 11, 14, 15]  # unlabelled real rows labelled by the hand-made round 1
FOREIGN = "pool-0123456789abcdef-00000000000000aa.h5"  # a neighbour pool's shard


def check(pool: Path, *extra: str) -> tuple[int, str]:
    res = runner.invoke(app, ["pool", "check", str(pool), *extra])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def status(pool: Path) -> tuple[int, dict[str, dict]]:
    code, out = check(pool, "--json")
    return code, {c["check"]: c for c in json.loads(out)["checks"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows of 4 classes, 8 labelled, a test split, and one finished round that labelled
    ROUND_1 and generated children of its first two picks."""
    path = tmp_path_factory.mktemp("base") / "p.h5"
    x, y = class_images(40)
    with PoolBuilder(path, (8, 8, 1), ["a", "b", "c", "d"]) as b:
        b.add(x, truth=y)
        b.add_test(x[:8], y[:8])
        b.finish(labelled=choose_initial(b.truth, 8, np.random.default_rng(0)))
    with PoolReader(path) as r:
        assert (r.states[ROUND_1] == State.UNLABELLED).all()
    with PoolWriter(path) as w:
        w.set_labels(ROUND_1, y[ROUND_1])
        w.set_state(ROUND_1, State.LABELLED, round_no=1)
        new = w.append(x[ROUND_1[:2]], labels=y[ROUND_1[:2]], parents=np.array(ROUND_1[:2]))
        record = {"round": 1, "selected": ROUND_1, "oracle_queries": 4, "free_labels": 0}
        record |= {"generated_added": 2, "generated_ids": [int(new[0]), int(new[-1]) + 1]}
        w.append_round({**record, "oracle_queries_total": 4, "config": {"depth_limit": 2}})
        w.commit()
    return path


@pytest.fixture
def pool(base: Path, tmp_path: Path) -> Path:
    """A private copy of the base pool (index and shards)."""
    path = tmp_path / "p.h5"
    shutil.copy(base, path)
    shutil.copytree(shard_dir(base), shard_dir(path))
    return path


def a_shard(pool: Path) -> Path:
    with PoolReader(pool) as r:
        return shard_dir(pool) / r.pool_shards[0].name


def pool_id(pool: Path) -> str:
    with PoolReader(pool) as r:
        assert r.pool_id is not None
        return r.pool_id


def edit(name: str, i: int, value: int) -> Callable[[Path], None]:
    def apply(pool: Path) -> None:
        with h5py.File(pool, "a") as f:
            f["pool"][name][i] = value

    return apply


def overwrite_middle(pool: Path) -> None:
    shard = a_shard(pool)
    with open(shard, "r+b") as fh:
        fh.seek(shard.stat().st_size // 2)
        fh.write(b"\xab" * 4096)


def truncate(pool: Path) -> None:
    shard = a_shard(pool)
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 3)


def our_orphan(pool: Path) -> None:
    shutil.copy(a_shard(pool), shard_dir(pool) / f"pool-{pool_id(pool)}-00000000000000bb.h5")


def record_with_missing_id(pool: Path) -> None:
    with h5py.File(pool, "a") as f:
        rec = json.loads(f["log/rounds"].asstr()[0])
        rec["selected"] = [*rec["selected"][:-1], 4000]
        f["log/rounds"][0] = json.dumps(rec)


def attr(name: str, value: str) -> Callable[[Path], None]:
    def apply(pool: Path) -> None:
        with h5py.File(pool, "a") as f:
            f.attrs[name] = value

    return apply


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "shard_deleted": (lambda p: a_shard(p).unlink(), "shards", "missing"),
    "shard_truncated": (truncate, "shards", "checksum"),
    "shard_overwritten_4k": (overwrite_middle, "shards", "checksum"),
    "orphan_shard_of_this_pool": (our_orphan, "orphans", "00000000000000bb"),
    "labelled_row_label_minus_1": (edit("label", ROUND_1[0], -1), "labels", "no label"),
    "labelled_row_label_out_of_range": (edit("label", ROUND_1[1], 4), "labels", "0..3"),
    "generated_row_other_label": (edit("label", 41, 0), "lineage", "another label"),
    "wrong_depth": (edit("depth", 40, 2), "depth", "parent's + 1"),
    "round_record_missing_id": (record_with_missing_id, "rounds", "4000"),
    "garbage_meta_attribute": (attr("meta", "{not json"), "attributes", "meta"),
    "garbage_shard_list": (attr("pool_shards", '[["x.h5", "many"]]'), "attributes", "pool_shards"),
    "garbage_pool_id": (attr("pool_id", "../../etc"), "attributes", "pool_id"),
}


def test_a_clean_pool_passes(pool: Path) -> None:
    code, out = check(pool)
    assert code == 0, out
    assert out.strip().endswith("pool OK")
    assert all(name in out for name in CHECKS)
    code, checks = status(pool)
    assert code == 0 and list(checks) == list(CHECKS)
    assert {c["status"] for c in checks.values()} == {"ok"}


@pytest.mark.parametrize("damage, name, needle", DAMAGE.values(), ids=DAMAGE.keys())
def test_each_damage_is_found_by_the_right_check(
    pool: Path, damage: Callable[[Path], None], name: str, needle: str
) -> None:
    damage(pool)
    code, checks = status(pool)
    assert code == 1, checks
    assert checks[name]["status"] == "damaged", checks[name]
    assert needle in checks[name]["detail"], checks[name]
    code, out = check(pool)
    assert code == 1 and "pool DAMAGED" in out and "pool OK" not in out


def test_repair_removes_our_orphan_only_and_keeps_every_label(pool: Path) -> None:
    our_orphan(pool)
    shutil.copy(a_shard(pool), shard_dir(pool) / FOREIGN)
    (pool.parent / f"{pool.name}.tmp-4242").write_bytes(b"half an index")
    with PoolReader(pool) as r:
        before = r.labels.copy(), r.states.copy(), r.rounds()
    code, out = check(pool)
    assert code == 1 and "--repair would remove 2 orphan files" in out
    assert FOREIGN not in out  # a neighbour's shard is not ours to report
    code, out = check(pool, "--repair")
    assert code == 0, out
    assert "repaired: removed 2 orphan files" in out and out.strip().endswith("pool OK")
    names = {p.name for p in shard_dir(pool).iterdir()}
    assert FOREIGN in names and not any("00000000000000bb" in n for n in names)
    assert not (pool.parent / f"{pool.name}.tmp-4242").exists()
    with PoolReader(pool) as r:
        np.testing.assert_array_equal(r.labels, before[0])
        np.testing.assert_array_equal(r.states, before[1])
        assert r.rounds() == before[2]


def test_the_shards_of_a_killed_create_are_orphans_repair_removes(pool: Path) -> None:
    dead = "feedfacefeedface"  # a `pool create --force` of this file, killed while writing
    shutil.copy(a_shard(pool), shard_dir(pool) / f"pool-{dead}-00000000000000cc.h5")
    info = pool.with_name(pool.name + ".lock.json")
    info.write_text(json.dumps({"creating": dead, "pid": 1, "purpose": "dgaal pool create"}))
    code, checks = status(pool)
    assert code == 1 and "00000000000000cc" in checks["orphans"]["detail"]
    code, out = check(pool, "--repair")
    assert code == 0 and "removed 1 orphan files" in out, out
    assert not any(dead in p.name for p in shard_dir(pool).iterdir())


def test_repair_cannot_bring_back_a_missing_shard(pool: Path) -> None:
    a_shard(pool).unlink()
    code, out = check(pool, "--repair")
    assert code == 1
    assert "cannot repair: shards: the images are gone" in out


def ask(pool: Path, asked: list[int], free: list[int]) -> None:
    """Round 2 as ``dgaal round --oracle human`` leaves it: waiting for answers."""
    with PoolWriter(pool) as w:
        w.set_state(free, State.LABELLED, round_no=2)
        w.set_state(asked, State.QUERIED)
        pending = {"round": 2, "phase": "awaiting_labels", "selected": asked + free}
        w.update_meta(pending_round={**pending, "queried": asked, "oracle": "human"})
        w.commit()


def test_repair_abandons_a_broken_round_waiting_for_answers(pool: Path) -> None:
    ask(pool, asked=[20, 21, 22], free=[41])  # 41: a generated row, labelled for free
    code, checks = status(pool)
    assert code == 0 and "waits for 3 answers" in checks["pending round"]["detail"]
    code, out = check(pool, "--repair")  # a healthy waiting round is left alone
    assert code == 0 and "abandon" not in out
    with PoolReader(pool) as r:
        labels, committed = r.labels.copy(), r.ids(State.LABELLED)
    backup_path(pool).unlink()  # as in a pool of an older dgaal: abandoning is the repair left
    edit("state", 21, State.UNLABELLED)(pool)  # the round's rows no longer match its phase
    code, checks = status(pool)
    assert code == 1 and checks["pending round"]["status"] == "damaged"
    assert "21" in checks["pending round"]["detail"]
    assert checks["backup"]["status"] == "ok" and "none yet" in checks["backup"]["detail"]
    code, out = check(pool, "--repair")
    assert code == 0, out
    assert "repaired: abandoned round 2: 3 queried images" in out
    with PoolReader(pool) as r:
        assert r.meta.get("pending_round") is None
        assert (r.states[[20, 21, 22, 41]] == State.UNLABELLED).all()
        kept = np.setdiff1d(committed, [41])  # every committed label of round 0 and 1 stays
        assert (r.states[kept] == State.LABELLED).all()
        np.testing.assert_array_equal(r.labels[kept], labels[kept])
    assert check_pool(pool)[-1].status == "ok"


def test_pool_check_does_not_load_torch(pool: Path) -> None:
    code = (
        "import sys; from cli.main import app\n"
        "try:\n    app(['pool', 'check', sys.argv[1]])\nexcept SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(pool)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_orphans_are_not_judged_while_a_writer_holds_the_lock(pool: Path) -> None:
    with PoolWriter(pool, purpose="dgaal round") as w:
        w.append(np.zeros((1, 8, 8, 1), np.uint8), parents=np.array([10]))  # staged, unpublished
        code, checks = status(pool)
    assert code == 0 and checks["orphans"]["status"] == "skipped"
    assert "being written by 'dgaal round'" in checks["orphans"]["detail"]
