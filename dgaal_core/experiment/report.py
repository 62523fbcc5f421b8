"""Reports of active-learning experiments: curves aggregated over seeds, a Markdown summary and
the plots (the paper's Fig. 3/6 accuracy curves, Fig. 5 annotation cost, Fig. 4 selections).

Input is a results dict: ``results.json`` of :class:`~dgaal_core.experiment.Experiment`, or one
pool's round log (:func:`results_from_pool`). The plots need matplotlib (the ``report`` extra,
imported lazily in :mod:`dgaal_core.report_plots`); the aggregation and the Markdown do not.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.experiment.runner import load_results, run_results, strategies_of
from dgaal_core.loop.strategies import strategy_spec


@dataclass(frozen=True)
class Point:
    """One round of one strategy, aggregated over the seeds that reached it."""

    round: int
    ratio: float  # labelled images / real images (mean over seeds)
    labelled: float
    seeds: int
    acc_mean: float | None
    acc_sd: float | None
    acc_min: float | None
    acc_max: float | None
    queries: float  # cumulative oracle queries after this round (mean over seeds)
    free: float  # cumulative free labels (generated images selected), mean over seeds


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def aggregate(results: dict[str, Any]) -> dict[str, list[Point]]:
    """Per strategy, one :class:`Point` per round number (round 0 = the initial set)."""
    out: dict[str, list[Point]] = {}
    for strategy in strategies_of(results):
        by_round: dict[int, list[dict[str, Any]]] = {}
        free_total: dict[tuple[int, int], float] = {}
        for i, run in enumerate(r for r in results["runs"] if r["strategy"] == strategy):
            total = 0.0
            for row in run["rounds"]:
                total += row.get("free_labels") or 0
                free_total[(i, row["round"])] = total
                by_round.setdefault(int(row["round"]), []).append({**row, "_run": i})
        points = []
        for n in sorted(by_round):
            rows = by_round[n]
            accs = [float(r["accuracy"]) for r in rows if r.get("accuracy") is not None]
            points.append(
                Point(
                    round=n,
                    ratio=_mean([float(r["labelled_ratio"]) for r in rows]),
                    labelled=_mean([float(r["labelled"]) for r in rows]),
                    seeds=len(rows),
                    acc_mean=_mean(accs) if accs else None,
                    acc_sd=float(statistics.stdev(accs))
                    if len(accs) > 1
                    else 0.0
                    if accs
                    else None,
                    acc_min=min(accs) if accs else None,
                    acc_max=max(accs) if accs else None,
                    queries=_mean([float(r["oracle_queries_total"]) for r in rows]),
                    free=_mean([free_total[(r["_run"], n)] for r in rows]),
                )
            )
        out[strategy] = points
    return out


def results_from_pool(pool: Path) -> dict[str, Any]:
    """A results dict holding one pool's curve (its round log, plus round 0 when the pool was
    made by an experiment)."""
    run = run_results(Path(pool))
    if not run["rounds"]:
        from dgaal_core.experiment.runner import ExperimentError

        raise ExperimentError(f"{pool}: no finished rounds to report on")
    return {"format": "pool", "source": str(pool), "config": None, "runs": [run]}


def accuracy_at_queries(points: list[Point], queries: float) -> float | None:
    """Mean accuracy interpolated (linearly) at a cumulative query count, None outside the
    curve's range."""
    xs = [p.queries for p in points if p.acc_mean is not None]
    ys = [p.acc_mean for p in points if p.acc_mean is not None]
    if not xs or queries < xs[0] - 1e-9 or queries > xs[-1] + 1e-9:
        return None
    return float(np.interp(queries, xs, ys))


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _ratio_key(ratio: float) -> float:
    return round(100 * ratio, 1)


def _settings_lines(results: dict[str, Any]) -> list[str]:
    cfg = results.get("config")
    if not cfg:
        return [f"Round log of `{results['source']}`."]
    s = cfg["schedule"]
    r = cfg["round"]
    steps = ", ".join(
        f"{k} {r[k]}"
        for k in ("gan_steps", "gan_epochs", "task_epochs", "coevolve_steps")
        if r.get(k) is not None
    )
    return [
        f"Source: {results['source']}; {results['real_images']} real training images, "
        f"{results['test_images']} test images, {results['num_classes']} classes.",
        f"Schedule: initial {s['initial']}, +{s['step']} per round, until {s['until']} "
        f"(labelled counts {results['targets']}); seeds {', '.join(map(str, cfg['seeds']))}; "
        f"preset `{r['preset']}`" + (f" ({steps})" if steps else "") + ".",
    ]


def summary_markdown(results: dict[str, Any], agg: dict[str, list[Point]] | None = None) -> str:
    """``summary.md``: accuracy (mean ± sd over seeds) and oracle queries per strategy and
    labelled ratio, then accuracy at equal oracle queries."""
    agg = aggregate(results) if agg is None else agg
    ratios = sorted({_ratio_key(p.ratio) for pts in agg.values() for p in pts})
    lines = ["# Active-learning results", "", *_settings_lines(results), ""]
    lines += [
        "## Test accuracy (%) by labelled ratio",
        "",
        "Mean ± sd over seeds; in brackets the cumulative oracle queries (mean), which exclude the "
        "initial labelled set. Generated images picked by DGAAL are labelled for free, so it "
        "reaches a ratio with fewer queries.",
        "",
        "| strategy | seeds | " + " | ".join(f"{r:g}%" for r in ratios) + " |",
        "|---|---|" + "---|" * len(ratios),
    ]
    for strategy, pts in agg.items():
        cells = {_ratio_key(p.ratio): p for p in pts}
        row = []
        for r in ratios:
            p = cells.get(r)
            if p is None:
                row.append("–")
            else:
                sd = f" ± {_pct(p.acc_sd)}" if p.seeds > 1 else ""
                row.append(f"{_pct(p.acc_mean)}{sd} ({p.queries:.0f})")
        seeds = max((p.seeds for p in pts), default=0)
        lines.append(f"| {strategy} | {seeds} | " + " | ".join(row) + " |")
    lines += _equal_queries_section(agg)
    lines += _reach_section(agg)
    lines += _paired_section(results)
    lines += _cost_section(agg)
    lines += _diagnostics_section(results)
    return "\n".join(lines) + "\n"


def paired_differences(
    results: dict[str, Any], strategy: str, other: str
) -> dict[int, list[float]]:
    """Per round, ``strategy``'s accuracy minus ``other``'s on each seed both ran: the two
    share the seed's initial labelled set, so these differences carry less noise than the gap
    between the means."""
    out: dict[int, list[float]] = {}
    for (_, n), d in sorted(_paired(results, strategy, other).items()):
        out.setdefault(n, []).append(d)
    return out


def _paired(results: dict[str, Any], strategy: str, other: str) -> dict[tuple[int, int], float]:
    """(seed, round) -> ``strategy``'s accuracy minus ``other``'s, rounds after the first."""
    acc: dict[tuple[str, int, int], float] = {}
    for run in results["runs"]:
        for row in run["rounds"]:
            if row.get("accuracy") is not None:
                acc[(run["strategy"], int(run["seed"]), int(row["round"]))] = float(row["accuracy"])
    return {
        (seed, n): a - acc[(other, seed, n)]
        for (s, seed, n), a in acc.items()
        if s == strategy and n > 0 and (other, seed, n) in acc
    }


def _paired_section(results: dict[str, Any], strategy: str = "dgaal") -> list[str]:
    """``strategy`` minus each other strategy, per round: mean ± sd of the per-seed differences
    and how many seeds it won."""
    others = [s for s in strategies_of(results) if s != strategy]
    if strategy not in strategies_of(results) or not others:
        return []
    ratio_of = {
        int(row["round"]): _ratio_key(float(row["labelled_ratio"]))
        for run in results["runs"]
        if run["strategy"] == strategy
        for row in run["rounds"]
    }
    rounds = sorted(n for n in ratio_of if n > 0)
    lines = [
        "",
        f"## {strategy} minus each other strategy, seed by seed (accuracy points)",
        "",
        "Per round: mean ± sd over seeds of the difference on the same seed (same initial "
        "labelled set), and in brackets the seeds on which "
        f"{strategy} was at least as accurate.",
        "",
        "| minus | " + " | ".join(f"{ratio_of[n]:g}%" for n in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    for other in others:
        diffs = paired_differences(results, strategy, other)
        cells = []
        for n in rounds:
            d = diffs.get(n)
            if not d:
                cells.append("–")
                continue
            sd = f" ± {100 * statistics.stdev(d):.1f}" if len(d) > 1 else ""
            wins = sum(x >= 0 for x in d)
            cells.append(f"{100 * _mean(d):+.1f}{sd} ({wins}/{len(d)})")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return lines


def _reach_section(agg: dict[str, list[Point]], baseline: str = "random") -> list[str]:
    """Oracle queries each strategy needs to reach the baseline's final mean accuracy."""
    if baseline not in agg or not agg[baseline] or agg[baseline][-1].acc_mean is None:
        return []
    last = agg[baseline][-1]
    goal = last.acc_mean
    assert goal is not None
    lines = [
        "",
        f"## Oracle queries to reach {baseline}'s final accuracy ({_pct(goal)}%)",
        "",
        "On the mean curves, linear between rounds; – where a strategy never gets there.",
        "",
        f"| strategy | queries | share of {baseline}'s {last.queries:.0f} |",
        "|---|---|---|",
    ]
    for strategy, pts in agg.items():
        need = _queries_to_reach(pts, goal)
        share = "–" if need is None or not last.queries else f"{100 * need / last.queries:.0f}%"
        lines.append(f"| {strategy} | {'–' if need is None else f'{need:.0f}'} | {share} |")
    return lines


def _diagnostics_section(results: dict[str, Any]) -> list[str]:
    """Per strategy and round (means over seeds): the largest class share among the picks,
    the share of generated picks, D1's AUC (labelled vs candidates), x_g's distance to x_s
    and the label fidelity of x_g."""
    keys = ("max_class_share", "generated_share", "d1_auc", "generated_distance", "label_fidelity")
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in results["runs"]:
        for row in run["rounds"]:
            if int(row["round"]) == 0:
                continue
            cell = table.setdefault((run["strategy"], int(row["round"])), {k: [] for k in keys})
            hist = row.get("picked_classes")
            if hist and sum(hist):
                cell["max_class_share"].append(max(hist) / sum(hist))
            for k in keys[1:]:
                v = row.get(k)
                if v is not None and np.isfinite(v):
                    cell[k].append(float(v))
    if not table:
        return []
    lines = [
        "",
        "## What the selection did (means over seeds)",
        "",
        "Largest class share among a round's picks (labels as revealed); share of picks that were "
        "generated images; D1's ROC AUC, labelled vs candidates, when it selected; mean "
        "|x_g - x_s| in 0..1 pixel units; label fidelity: share of the round's x_g whose class a "
        "T trained on all the ground truth agrees with the inherited label.",
        "",
        "| strategy | round | top class share | generated share | D1 AUC | x_g distance | "
        "label fidelity |",
        "|---|---|---|---|---|---|---|",
    ]
    for (strategy, n), cell in sorted(table.items()):
        vals = [_mean(cell[k]) if cell[k] else None for k in keys]
        text = [
            "–" if v is None else (f"{v:.3f}" if k in ("d1_auc", "generated_distance") else _pct(v))
            for k, v in zip(keys, vals, strict=True)
        ]
        lines.append(f"| {strategy} | {n} | " + " | ".join(text) + " |")
    return lines


def _equal_queries_section(agg: dict[str, list[Point]]) -> list[str]:
    """Accuracy of every strategy at the query counts of a non-generating reference."""
    ref = next((s for s in ("random", *agg) if s in agg and not _generates(s)), None)
    if ref is None or len(agg) < 2:
        return []
    levels = [p.queries for p in agg[ref] if p.round > 0]
    if not levels:
        return []
    lines = [
        "",
        "## Test accuracy (%) at equal oracle queries",
        "",
        f"Mean accuracy interpolated at {ref}'s cumulative query counts (– where a strategy's "
        "curve does not reach that count).",
        "",
        "| strategy | " + " | ".join(f"{q:.0f} q" for q in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for strategy, pts in agg.items():
        row = [_pct(accuracy_at_queries(pts, q)) for q in levels]
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    return lines


def _cost_section(agg: dict[str, list[Point]]) -> list[str]:
    """Queries per image added at the last round, as the paper's Fig. 5 discussion."""
    lines = [
        "",
        "## Annotation cost at the last round",
        "",
        "| strategy | labelled ratio | images added | oracle queries | free labels | "
        "queries / images added |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, pts in agg.items():
        if not pts:
            continue
        first, last = pts[0], pts[-1]
        added = last.labelled - first.labelled if first.round == 0 else None
        share = "–" if not added else f"{100 * last.queries / added:.1f}%"
        lines.append(
            f"| {strategy} | {_pct(last.ratio)}% | {'–' if added is None else f'{added:.0f}'} | "
            f"{last.queries:.0f} | {last.free:.1f} | {share} |"
        )
    return lines


def _generates(strategy: str) -> bool:
    try:
        return strategy_spec(strategy).generate
    except ValueError:
        return False


def _sheet_source(results: dict[str, Any], base: Path) -> Path | None:
    """The pool whose selection the contact sheet shows: the first run of a generating
    strategy (DGAAL), else the first run; relative paths resolve against ``base``."""
    runs = sorted(results["runs"], key=lambda r: not _generates(r["strategy"]))
    for run in runs:
        path = Path(run["pool"])
        path = path if path.is_absolute() else base / path
        if path.exists():
            return path
    return None


def write_report(
    results: dict[str, Any],
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
) -> tuple[dict[str, Any], Path]:
    """Load a results dict from ``results.json`` or a pool; returns it and the folder its
    relative run paths resolve against."""
    if (results_path is None) == (pool is None):
        from dgaal_core.experiment.runner import ExperimentError

        raise ExperimentError("give exactly one of --results and --pool")
    if results_path is not None:
        return load_results(results_path), Path(results_path).parent
    assert pool is not None
    return results_from_pool(pool), Path(pool).parent


def _queries_to_reach(points: list[Point], accuracy: float) -> float | None:
    """Cumulative queries at which a strategy's mean curve first reaches ``accuracy``
    (linear between rounds), None if it never does."""
    pts = [p for p in points if p.acc_mean is not None]
    for a, b in itertools.pairwise(pts):
        if a.acc_mean is not None and a.acc_mean >= accuracy:
            return a.queries
        if b.acc_mean is not None and a.acc_mean is not None and b.acc_mean >= accuracy:
            t = (accuracy - a.acc_mean) / (b.acc_mean - a.acc_mean)
            return a.queries + t * (b.queries - a.queries)
    if pts and pts[-1].acc_mean is not None and pts[-1].acc_mean >= accuracy:
        return pts[-1].queries
    return None


def headline(agg: dict[str, list[Point]], strategy: str = "dgaal", baseline: str = "random") -> str:
    """One sentence a newcomer understands: final accuracy and oracle queries of ``strategy``,
    and what ``baseline`` needed for the same accuracy."""
    if not agg.get(strategy) or not agg.get(baseline):
        return ""
    s, b = agg[strategy][-1], agg[baseline][-1]
    if s.acc_mean is None or b.acc_mean is None:
        return ""
    text = (
        f"{strategy} reached {_pct(s.acc_mean)}% test accuracy with {s.queries:.0f} oracle "
        f"queries ({s.free:.0f} more labels were free: generated images); "
    )
    need = _queries_to_reach(agg[baseline], s.acc_mean)
    if need is None:
        return text + (
            f"{baseline} reached {_pct(b.acc_mean)}% with {b.queries:.0f} queries and never "
            f"got to {_pct(s.acc_mean)}%."
        )
    return text + (
        f"{baseline} needed {need:.0f} queries for that accuracy "
        f"and reached {_pct(b.acc_mean)}% with {b.queries:.0f}."
    )


def verdict(results: dict[str, Any], strategy: str = "dgaal", baseline: str = "random") -> str:
    """Whether the seeds resolve ``strategy`` against ``baseline``: each seed's accuracy gap
    averaged over the rounds after the initial one (the two share that seed's initial set),
    then mean ± sd over seeds. Called resolved only with >= 3 seeds and a mean more than two
    standard errors from zero; the headline alone cannot tell a gap from T's noise."""
    per_seed: dict[int, list[float]] = {}
    for (seed, _), d in _paired(results, strategy, baseline).items():
        per_seed.setdefault(seed, []).append(d)
    gaps = [100 * statistics.fmean(d) for d in per_seed.values()]
    if not gaps:
        return ""
    mean = statistics.fmean(gaps)
    sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    spread = f" ± {sd:.1f} (sd over {len(gaps)} seeds)" if len(gaps) > 1 else ""
    text = (
        f"Seed by seed, {strategy} minus {baseline} averaged over the rounds: "
        f"{mean:+.1f} points{spread}"
    )
    if len(gaps) < 3:
        return text + f"; {len(gaps)} seed(s) cannot separate this from T's own noise."
    if abs(mean) <= 2 * sd / len(gaps) ** 0.5:
        return text + f"; within the noise: {len(gaps)} seeds do not resolve this gap."
    better = "ahead of" if mean > 0 else "behind"
    return text + f"; {strategy} is {better} {baseline} beyond the noise of {len(gaps)} seeds."
