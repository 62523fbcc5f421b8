"""Reports: aggregation over seeds, summary.md, the PNG plots, the selection contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from dgaal_core.experiment.config import ExperimentError
from dgaal_core.experiment.curves import accuracy_at_queries, aggregate, paired_differences
from dgaal_core.experiment.plots import ReportError
from dgaal_core.experiment.report import headline, verdict, write_report
from dgaal_core.experiment.results import Results, results_from_pool
from dgaal_core.experiment.summary import summary_markdown
from dgaal_core.loop.selection import choose_initial
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolBuilder, PoolWriter

PNG = b"\x89PNG\r\n\x1a\n"


def typed(raw: dict) -> Results:
    """The results dict the tests edit, as the report reads it (results.json's format)."""
    return Results.from_dict(raw)


def run(strategy: str, seed: int, accs: list[float], free: list[int]) -> dict:
    """A run of 100 real images: 10 labelled, +10 per round; ``free`` labels per round."""
    rows, total = [], 0
    for n, (acc, f) in enumerate(zip(accs, [0, *free], strict=True)):
        q = 0 if n == 0 else 10 - f
        total += q
        rows.append({"round": n, "labelled": 10 + 10 * n, "labelled_ratio": 0.1 + 0.1 * n,
                     "oracle_queries": q, "oracle_queries_total": total, "free_labels": f,
                     "generated_added": 0, "accuracy": acc})  # fmt: skip
    return {"strategy": strategy, "seed": seed, "pool": f"runs/{strategy}-seed{seed}/pools.h5",
            "rounds": rows}  # fmt: skip


@pytest.fixture
def results() -> dict:
    return {
        "format": "dgaal-experiment-results",
        "source": "digits.h5",
        "real_images": 100,
        "test_images": 40,
        "num_classes": 4,
        "targets": [10, 20, 30],
        "config": {
            "strategies": ["dgaal", "random"],
            "seeds": [0, 1],
            "schedule": {"initial": 0.1, "step": 0.1, "until": 0.3},
            "round": {"preset": "small", "gan_steps": 4, "task_epochs": 1, "task_min_steps": 0},
        },
        "runs": [
            run("dgaal", 0, [0.5, 0.7, 0.9], [0, 4]),
            run("random", 0, [0.5, 0.6, 0.7], [0, 0]),
            run("dgaal", 1, [0.6, 0.8, 0.8], [2, 2]),
            run("random", 1, [0.6, 0.6, 0.8], [0, 0]),
        ],
    }


def test_aggregate_means_bands_and_cumulative_queries(results):
    agg = aggregate(typed(results))
    assert list(agg) == ["dgaal", "random"]
    last = agg["dgaal"][-1]
    assert last.round == 2 and last.seeds == 2 and last.ratio == pytest.approx(0.3)
    assert last.acc_mean == pytest.approx(0.85) and (last.acc_min, last.acc_max) == (0.8, 0.9)
    assert last.acc_sd == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert last.queries == pytest.approx((16 + 16) / 2) and last.free == pytest.approx(4)
    assert [p.queries for p in agg["random"]] == [0, 10, 20]
    assert accuracy_at_queries(agg["random"], 15) == pytest.approx(0.675)
    assert accuracy_at_queries(agg["dgaal"], 20) is None  # dgaal spent only 16


def test_summary_markdown_tables(results):
    md = summary_markdown(typed(results))
    assert "| strategy | seeds | 10% | 20% | 30% |" in md
    assert "| dgaal | 2 | 55.0 ± 7.1 (0) | 75.0 ± 7.1 (9) | 85.0 ± 7.1 (16) |" in md
    assert "| random | 2 | 55.0 ± 7.1 (0) | 60.0 ± 0.0 (10) | 75.0 ± 7.1 (20) |" in md
    assert "## Test accuracy (%) at equal oracle queries" in md
    assert "| strategy | 10 q | 20 q |" in md
    assert "| dgaal | 30.0% | 20 | 16 | 4.0 | 80.0% |" in md
    assert "seeds 0, 1" in md
    assert "## Area under the budget curve (AUBC, %)" in md and "| random | 2 | " in md


def test_paired_differences_compare_seed_by_seed(results):
    diffs = paired_differences(typed(results), "dgaal", "random")
    assert list(diffs) == [1, 2]  # round 0 is the shared initial set
    assert diffs[1] == pytest.approx([0.1, 0.2]) and diffs[2] == pytest.approx([0.2, 0.0])
    md = summary_markdown(typed(results))
    assert "## dgaal minus each other strategy, seed by seed" in md
    assert "| random | +15.0 ± 7.1 (2/2) | +10.0 ± 14.1 (2/2) |" in md
    results["runs"][2]["rounds"][2]["accuracy"] = 0.7  # seed 1: dgaal now 10 points behind
    assert "| random | +15.0 ± 7.1 (2/2) | +5.0 ± 21.2 (1/2) |" in summary_markdown(typed(results))


def test_headline_compares_with_random(results):
    text = headline(aggregate(typed(results)))
    assert text.startswith("dgaal reached 85.0% test accuracy with 16 oracle queries")
    assert "random reached 75.0% with 20 queries and never got to 85.0%" in text
    results["runs"][1]["rounds"][2]["accuracy"] = 0.9  # random now ends at 95% (mean)
    results["runs"][3]["rounds"][2]["accuracy"] = 1.0
    text = headline(
        aggregate(typed(results))
    )  # 85% lies 5/7 of the way from 60% (10 q) to 95% (20 q)
    assert "random needed 17 queries for that accuracy and reached 95.0% with 20." in text


def selection_pool(path: Path) -> Path:
    """A pool with one round whose selection holds 3 real and 2 generated images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8)
    with PoolBuilder(path, (8, 8, 1), ["a", "b"]) as b:
        b.add(images, truth=np.arange(20) % 2)
        b.add_test(images[:4], np.arange(4) % 2)
        b.finish(labelled=choose_initial(b.truth, 4, rng))
    with PoolWriter(path) as w:
        gen = w.append(images[:2], labels=np.array([0, 1]), parents=np.array([0, 1]))
        picked = np.array([5, 6, 7, *gen])
        w.set_labels(picked[:3], [1, 0, 1])
        w.set_state(picked, State.LABELLED, round_no=1)
        rec = {"round": 1, "strategy": "dgaal", "selected": picked.tolist(), "oracle_queries": 3,
               "free_labels": 2, "generated_added": 0, "labelled": 9, "labelled_real": 7,
               "labelled_ratio": 0.45, "oracle_queries_total": 3, "accuracy": 0.75,
               "config": {"seed": 0}, "timings": {"task": 1.0}}  # fmt: skip
        w.append_round(rec)
        w.commit()
    return path


def test_write_report_files_are_pngs_and_markdown(results, tmp_path):
    pool = selection_pool(tmp_path / "p.h5")
    files = write_report(typed(results), tmp_path / "report", pool=pool)
    names = sorted(f.name for f in files)
    assert names == ["accuracy.png", "accuracy_vs_queries.png", "oracle_queries.png",
                     "selection.png", "summary.md"]  # fmt: skip
    for f in files:
        data = f.read_bytes()
        assert len(data) > 500
        if f.suffix == ".png":
            assert data.startswith(PNG)
    with pytest.raises(ReportError, match="no round 7"):
        write_report(typed(results), tmp_path / "r2", pool=pool, round_no=7)
    write_report(typed(results), tmp_path / "r3", band="sd")  # no pool found: no contact sheet
    assert not (tmp_path / "r3" / "selection.png").exists()


def test_report_from_a_pool_round_log(tmp_path):
    pool = selection_pool(tmp_path / "p.h5")
    res = results_from_pool(pool)
    rows = res.runs[0].rows
    assert res.runs[0].strategy == "dgaal" and [x.round for x in rows] == [0, 1]
    with PoolReader(pool) as r:  # the initial set (one of its rows was picked again by hand)
        initial = int(np.sum((r.fields["round"] == 0) & (r.states == State.LABELLED)))
    assert rows[0].labelled == initial == 3 and rows[0].accuracy is None  # never evaluated
    cli = CliRunner().invoke(app, ["report", "--pool", str(pool), "--out", str(tmp_path / "r")])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "r" / "selection.png").read_bytes().startswith(PNG)
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "| dgaal | 1 | n/a (0) | 75.0 (3) |" in summary
    assert "–" not in summary and "n/a: nothing to show there: not measured" in summary
    assert "minus random" not in summary  # a column with nothing in it is left out


def test_a_flat_accuracy_curve_gets_an_axis_of_five_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgaal_core.experiment.plots import _accuracy_span

    fig, ax = plt.subplots()
    ax.plot([0.1, 0.2], [0.424, 0.426])
    _accuracy_span(ax)
    lo, hi = ax.get_ylim()
    assert hi - lo == pytest.approx(0.05) and lo < 0.424 and hi > 0.426
    ax.set_ylim(0.97, 0.999)
    _accuracy_span(ax)
    assert ax.get_ylim() == pytest.approx((0.95, 1.0))  # kept inside [0, 1]
    plt.close(fig)


def test_report_errors_are_one_line(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{}")
    res = CliRunner().invoke(app, ["report", "--results", str(bad), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a dgaal experiment results file" in res.output
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "exactly one of --results and --pool" in res.output
    empty = tmp_path / "empty.h5"
    with PoolBuilder(empty, (8, 8, 1), ["a", "b"]) as b:
        b.add(np.zeros((4, 8, 8, 1), np.uint8), truth=np.array([0, 1, 0, 1]))
        b.finish()
    with pytest.raises(ExperimentError, match="no finished rounds"):
        results_from_pool(empty)


def test_missing_matplotlib_names_the_extra(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match=r"pip install 'dgaal\[report\]'"):
        write_report(typed(results), tmp_path / "r")


def test_verdict_says_whether_the_seeds_resolve_the_gap(results):
    text = verdict(typed(results))  # seed 0: +15 points over rounds 1-2, seed 1: +10
    assert text.startswith("Seed by seed, dgaal minus random averaged over the rounds: +12.5")
    assert "2 seed(s) cannot separate this from T's own noise" in text
    for seed, gain in ((2, [0.1, 0.1]), (3, [0.2, 0.1])):  # two more seeds, dgaal ahead on all
        results["runs"].append(run("dgaal", seed, [0.5, 0.6 + gain[0], 0.7 + gain[1]], [0, 0]))
        results["runs"].append(run("random", seed, [0.5, 0.6, 0.7], [0, 0]))
    assert "dgaal is ahead of random beyond the noise of 4 seeds" in verdict(typed(results))
    results["runs"][-2]["rounds"][2]["accuracy"] = 0.2  # seed 3 now 15 points behind on average
    assert "within the noise: 4 seeds do not resolve this gap" in verdict(typed(results))
    assert verdict(typed(results), baseline="entropy") == ""  # nothing to compare with


def test_report_of_results_needs_neither_torch_nor_onnx(results, tmp_path):
    """``dgaal report --results`` runs on the base install plus the report extra."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'onnxruntime', 'sklearn'):\n"
        "    sys.modules[m] = None  # importing them now fails\n"
        "from cli.main import app\n"
        "try:\n"
        "    app(['report', '--results', sys.argv[1], '--out', sys.argv[2]])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    out = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "summary.md").is_file() and (out / "accuracy.png").read_bytes().startswith(PNG)


def test_aubc_is_the_mean_accuracy_along_the_budget():
    from dgaal_core.experiment.curves import aubc
    from dgaal_core.experiment.results import ResultRow

    rows = [ResultRow(0, 10, 0.1, accuracy=0.5), ResultRow(1, 20, 0.2, accuracy=0.7),
            ResultRow(2, 40, 0.4, accuracy=0.7)]  # fmt: skip
    # trapezoids: 0.1 * 0.6 + 0.2 * 0.7 = 0.2 over a range of 0.3
    assert aubc(rows) == pytest.approx(0.2 / 0.3)
    assert aubc(rows[:1]) is None and aubc(list(reversed(rows))) == pytest.approx(0.2 / 0.3)
