"""What a new user meets first: a pool without labels, a re-run after an interruption, answers
in several sittings, what the round and ``pool info`` print, and the progress bars at 80 columns.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pools import class_images, cli

from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.round import Round
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from export.round_backend import onnx_exporter

FAST = ("--gan-steps", "4", "--task-epochs", "1", "--task-min-steps", "0",
        "--coevolve-steps", "2", "--quiet")  # fmt: skip


@pytest.fixture
def flat_pool(tmp_path: Path) -> Path:
    """A flat folder of 40 unlabelled colour images, made into a pool with no labels."""
    images, _ = class_images(40)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, img in enumerate(images):
        Image.fromarray(np.repeat(img, 3, axis=2)).save(folder / f"img{k:03d}.png")
    pool = tmp_path / "p.h5"
    ran = cli("pool", "create", pool, "--from", "folder", folder, "--num-classes", "4")
    assert ran.code == 0, ran.stdout + ran.stderr
    return pool


def test_a_pool_without_labels_starts_with_the_default_strategy(flat_pool: Path) -> None:
    ran = cli("round", "--pool", flat_pool, "--budget", "8", *FAST)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert "has no labels yet: round 1 picks its images at random" in ran.stderr
    assert "8 images to label are in" in ran.stdout
    with PoolReader(flat_pool) as r:
        asked = r.ids(State.QUERIED)
        assert asked.size == 8 and r.meta["pending_round"]["config"]["strategy"] == "random"
    info = cli("pool", "info", flat_pool)
    assert "round 1 is waiting for 8 answers (id " + ", ".join(map(str, asked)) in info.stdout
    # answers in two sittings; the completed file imported again counts what came before
    part, full = flat_pool.parent / "part.csv", flat_pool.parent / "full.csv"
    part.write_text("id,label\n" + "".join(f"{i},{k % 4}\n" for k, i in enumerate(asked[:7])))
    full.write_text("id,label\n" + "".join(f"{i},{k % 4}\n" for k, i in enumerate(asked)))
    ran = cli("label", "--pool", flat_pool, part)
    assert f"round 1: 7 answers imported; 1 still waiting (id {asked[7]})" in ran.stdout
    ran = cli("label", "--pool", flat_pool, full)
    assert "round 1: 1 answer imported; 7 imported before; run `dgaal round`" in ran.stdout
    changed = flat_pool.parent / "changed.csv"
    changed.write_text(f"id,label\n{asked[0]},3\n")
    ran = cli("label", "--pool", flat_pool, changed)
    assert ran.code == 2 and f"id {asked[0]} was imported as '0', the file now says '3'" in (
        ran.stderr
    )
    assert "unfinished (after phase 'selected')" in cli("pool", "info", flat_pool).stdout
    # the answers finish the round (T trained on them) and the pool goes on with dgaal
    ran = cli("round", "--pool", flat_pool, "--budget", "4", *FAST)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert "round 1 (random)" in ran.stdout and "8 (8 real + 0 generated)" in ran.stdout
    ran = cli("round", "--pool", flat_pool, "--budget", "4", *FAST)
    assert "round 2: 4 images to label" in ran.stdout, ran.stdout + ran.stderr
    with PoolReader(flat_pool) as r:
        assert r.meta["pending_round"]["config"]["strategy"] == "dgaal"


class _Crash(Exception):
    pass


def test_a_rerun_after_an_interruption_finishes_it_then_runs_the_round_asked_for(
    tmp_path: Path,
) -> None:
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    exporter = onnx_exporter(provider="cpu")

    def crashing(request):  # the round dies after COMMIT A, while generating x_g
        served = exporter(request)
        served.generate = lambda images, seed: (_ for _ in ()).throw(_Crash())
        return served

    cfg = RoundConfig(budget=20, gan_steps=4, task_epochs=1, task_min_steps=0, coevolve_steps=2)
    with pytest.raises(_Crash):
        Round(pool, cfg, crashing, log=lambda _: None).run()
    ran = cli("round", "--pool", pool, "--strategy", "random", "--budget", "30", *FAST)
    assert ran.code == 0, ran.stdout + ran.stderr
    said = ran.stderr.replace("\n", " ")
    assert "resuming round 1 after phase 'selected'; with its own settings, not --strategy " in said
    assert "--budget 30" in said and "(they apply to the round started next)" in said
    assert "round 1 finished; now the round asked for" in said
    with PoolReader(pool) as r:
        rounds = r.rounds()
    assert [(x["round"], x["strategy"], len(x["selected"])) for x in rounds] == [
        (1, "dgaal", 20),
        (2, "random", 30),
    ]
    assert "round 1 (dgaal)" in ran.stdout and "round 2 (random)" in ran.stdout
    assert rounds[0]["timings"]["task to select"] > 0  # round 1's T for selection, named


def test_pool_info_shows_accuracy_as_the_round_does(tmp_path: Path) -> None:
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    ran = cli("round", "--pool", pool, "--strategy", "random", "--budget", "20", *FAST)
    shown = next(x for x in ran.stdout.splitlines() if "test accuracy" in x).split()[-2]
    assert shown.endswith("%")
    assert shown in cli("pool", "info", pool).stdout


def test_progress_bars_keep_the_stage_name_whole_at_80_columns(monkeypatch) -> None:
    from rich.console import Console

    import cli.progress as progress

    con = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(progress, "console", con)
    bars = progress.StageProgress()
    bars("Algorithm 1", 500, 2000, d1=0.6931, d2=-0.1234, g=1.234, pmse=0.0123)
    bars("T to select with", 5, 20, loss=1.5)
    con.print(bars._bar.make_tasks_table(bars._bar.tasks))
    lines = con.file.getvalue().splitlines()
    assert lines[0].startswith("Algorithm 1 ") and "500/2000" in lines[0]
    assert lines[1].startswith("T to select with ") and "5/20" in lines[1]
    assert all(len(x) <= 80 for x in lines)


def test_version_and_plain_help() -> None:
    ran = cli("--version")
    assert ran.code == 0 and ran.stdout.startswith("dgaal ")
    helped = cli("round", "--help").stdout
    assert "<bool>" not in helped and "--take-all " in helped
    assert "pip install 'dgaal[ray]'" in " ".join(helped.split())  # no markup ate "[ray]"
    assert all(len(x) <= 100 for x in helped.splitlines())


def test_answers_imported_again_after_x_g_were_generated_redo_nothing(tmp_path: Path) -> None:
    from dgaal_core.loop.oracle import apply_answers
    from dgaal_core.loop.state import Phase, pending_round

    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    cfg = RoundConfig(budget=10, oracle="human", gan_steps=4, task_epochs=1, task_min_steps=0,
                      coevolve_steps=2)  # fmt: skip
    exporter = onnx_exporter(provider="cpu")
    Round(pool, cfg, exporter, log=lambda _: None).run()
    with PoolReader(pool) as r:
        asked = r.ids(State.QUERIED)
        truth = r.read_truth(asked)
    answers = tmp_path / "a.csv"
    rows_text = "".join(f"{i},{t}\n" for i, t in zip(asked, truth, strict=True))
    answers.write_text("id,label\n" + rows_text)
    apply_answers(pool, answers)

    def dies_training_t(stage: str, done: int, total: int, /, **info: float) -> None:
        if stage == "Task model":
            raise _Crash()

    with pytest.raises(_Crash):  # x_g are in (COMMIT B), T is not
        Round(pool, cfg, exporter, log=lambda _: None, progress=dies_training_t).run()
    with PoolReader(pool) as r:
        rows, phase = r.num_rows, pending_round(r).phase
    assert phase is Phase.GENERATED and rows > 1438
    again = apply_answers(pool, answers)  # the same file once more: counted, nothing moves
    assert (again.answered, again.already) == (0, 10)
    with PoolReader(pool) as r:
        assert pending_round(r).phase is Phase.GENERATED
    record = Round(pool, cfg, exporter, log=lambda _: None).run()
    with PoolReader(pool) as r:
        assert r.num_rows == rows and record.generated_added == rows - 1438  # generated once
