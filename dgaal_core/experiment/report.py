"""Reports of active-learning experiments: the headline and the seed-by-seed verdict, and the
report's files, ``summary.md`` (:mod:`dgaal_core.experiment.summary`) and the plots (the paper's
Fig. 3/6 accuracy curves, Fig. 5 annotation cost, Fig. 4 selections).

Input is :class:`~dgaal_core.experiment.results.Results`: ``results.json`` of an experiment, or
one pool's round log. Torch-free; the plots need matplotlib (the ``report`` extra, imported
lazily in :mod:`dgaal_core.experiment.plots`), the rest does not.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from dgaal_core.experiment.config import ExperimentError
from dgaal_core.experiment.curves import Point, aggregate, generates, paired, pct, queries_to_reach
from dgaal_core.experiment.results import Results, load_results, results_from_pool
from dgaal_core.experiment.summary import summary_markdown


def headline(agg: dict[str, list[Point]], strategy: str = "dgaal", baseline: str = "random") -> str:
    """One sentence a newcomer understands: final accuracy and oracle queries of ``strategy``,
    and what ``baseline`` needed for the same accuracy."""
    if not agg.get(strategy) or not agg.get(baseline):
        return ""
    s, b = agg[strategy][-1], agg[baseline][-1]
    if s.acc_mean is None or b.acc_mean is None:
        return ""
    text = (
        f"{strategy} reached {pct(s.acc_mean)}% test accuracy with {s.queries:.0f} oracle "
        f"queries ({s.free:.0f} more labels were free: generated images); "
    )
    need = queries_to_reach(agg[baseline], s.acc_mean)
    if need is None:
        return text + (
            f"{baseline} reached {pct(b.acc_mean)}% with {b.queries:.0f} queries and never "
            f"got to {pct(s.acc_mean)}%."
        )
    return text + (
        f"{baseline} needed {need:.0f} queries for that accuracy "
        f"and reached {pct(b.acc_mean)}% with {b.queries:.0f}."
    )


def verdict(results: Results, strategy: str = "dgaal", baseline: str = "random") -> str:
    """Whether the seeds resolve ``strategy`` against ``baseline``: each seed's accuracy gap
    averaged over the rounds after the initial one (the two share that seed's initial set),
    then mean ± sd over seeds. Called resolved only with >= 3 seeds and a mean more than two
    standard errors from zero; the headline alone cannot tell a gap from T's noise."""
    per_seed: dict[int, list[float]] = {}
    for (seed, _), d in paired(results, strategy, baseline).items():
        per_seed.setdefault(seed, []).append(d)
    gaps = [100 * statistics.fmean(d) for d in per_seed.values()]
    if not gaps:
        return ""
    m = statistics.fmean(gaps)
    sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    spread = f" ± {sd:.1f} (sd over {len(gaps)} seeds)" if len(gaps) > 1 else ""
    text = (
        f"Seed by seed, {strategy} minus {baseline} averaged over the rounds: "
        f"{m:+.1f} points{spread}"
    )
    if len(gaps) < 3:
        return text + f"; {len(gaps)} seed(s) cannot separate this from T's own noise."
    if abs(m) <= 2 * sd / len(gaps) ** 0.5:
        return text + f"; within the noise: {len(gaps)} seeds do not resolve this gap."
    better = "ahead of" if m > 0 else "behind"
    return text + f"; {strategy} is {better} {baseline} beyond the noise of {len(gaps)} seeds."


def _sheet_source(results: Results, base: Path) -> Path | None:
    """The pool whose selection the contact sheet shows: the first run of a generating
    strategy (DGAAL), else the first run; relative paths resolve against ``base``."""
    for run in sorted(results.runs, key=lambda r: not generates(r.strategy)):
        path = Path(run.pool)
        path = path if path.is_absolute() else base / path
        if path.exists():
            return path
    return None


def write_report(
    results: Results,
    out_dir: Path,
    *,
    pool: Path | None = None,
    round_no: int | None = None,
    base: Path | None = None,
    band: str = "minmax",
) -> list[Path]:
    """Write ``summary.md`` and the PNG plots into ``out_dir``; returns the files written.

    The contact sheet shows round ``round_no`` (default: the last) of ``pool``, or of the
    results' first DGAAL run when ``pool`` is None (run paths relative to ``base``).
    """
    from dgaal_core.experiment import plots as rp  # matplotlib: only now

    rp.require_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    title = rp.dataset_title(results)
    written = [
        rp.plot_accuracy(agg, out_dir / "accuracy.png", title=title, band=band),
        rp.plot_queries(agg, out_dir / "oracle_queries.png", title=title),
        rp.plot_accuracy_vs_queries(agg, out_dir / "accuracy_vs_queries.png", title=title),
    ]
    sheet_pool = pool if pool is not None else _sheet_source(results, base or Path("."))
    if sheet_pool is not None:
        sheet = rp.plot_selection(sheet_pool, out_dir / "selection.png", round_no=round_no)
        if sheet is not None:
            written.append(sheet)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(results, agg))
    written.append(summary)
    return written


def report_from(
    *, results_path: Path | None = None, pool: Path | None = None
) -> tuple[Results, Path]:
    """Load results from ``results.json`` or a pool; returns them and the folder their
    relative run paths resolve against."""
    if (results_path is None) == (pool is None):
        raise ExperimentError("give exactly one of --results and --pool")
    if results_path is not None:
        return load_results(results_path), Path(results_path).parent
    assert pool is not None
    return results_from_pool(pool), Path(pool).parent
