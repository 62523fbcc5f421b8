"""Curves of an experiment: per strategy and round, accuracy and oracle queries aggregated over
the seeds (:class:`Point`), paired differences seed by seed, and the interpolations the report's
tables and headline use (pure Python over :class:`~dgaal_core.experiment.results.Results`)."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

import numpy as np

from dgaal_core.experiment.results import ResultRow, Results
from dgaal_core.loop.strategies import STRATEGIES


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


def mean(values: list[float]) -> float:
    """The mean, NaN for no values."""
    return float(statistics.fmean(values)) if values else float("nan")


def aggregate(results: Results) -> dict[str, list[Point]]:
    """Per strategy, one :class:`Point` per round number (round 0 = the initial set)."""
    out: dict[str, list[Point]] = {}
    for strategy in results.strategies():
        rows: dict[int, list[ResultRow]] = {}
        free: dict[int, list[float]] = {}  # cumulative free labels of each run at each round
        for run in results.runs:
            if run.strategy != strategy:
                continue
            total = 0.0
            for row in run.rows:
                total += row.free_labels or 0
                rows.setdefault(row.round, []).append(row)
                free.setdefault(row.round, []).append(total)
        points = []
        for n in sorted(rows):
            accs = [float(r.accuracy) for r in rows[n] if r.accuracy is not None]
            sd = (statistics.stdev(accs) if len(accs) > 1 else 0.0) if accs else None
            points.append(
                Point(
                    round=n,
                    ratio=mean([r.labelled_ratio for r in rows[n]]),
                    labelled=mean([float(r.labelled) for r in rows[n]]),
                    seeds=len(rows[n]),
                    acc_mean=mean(accs) if accs else None,
                    acc_sd=None if sd is None else float(sd),
                    acc_min=min(accs) if accs else None,
                    acc_max=max(accs) if accs else None,
                    queries=mean([float(r.oracle_queries_total) for r in rows[n]]),
                    free=mean(free[n]),
                )
            )
        out[strategy] = points
    return out


def accuracy_at_queries(points: list[Point], queries: float) -> float | None:
    """Mean accuracy interpolated (linearly) at a cumulative query count, None outside the
    curve's range."""
    xs = [p.queries for p in points if p.acc_mean is not None]
    ys = [p.acc_mean for p in points if p.acc_mean is not None]
    if not xs or queries < xs[0] - 1e-9 or queries > xs[-1] + 1e-9:
        return None
    return float(np.interp(queries, xs, ys))


def queries_to_reach(points: list[Point], accuracy: float) -> float | None:
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


def paired(results: Results, strategy: str, other: str) -> dict[tuple[int, int], float]:
    """(seed, round) -> ``strategy``'s accuracy minus ``other``'s, rounds after the first."""
    acc: dict[tuple[str, int, int], float] = {}
    for run in results.runs:
        for row in run.rows:
            if row.accuracy is not None and run.seed is not None:
                acc[(run.strategy, run.seed, row.round)] = float(row.accuracy)
    return {
        (seed, n): a - acc[(other, seed, n)]
        for (s, seed, n), a in acc.items()
        if s == strategy and n > 0 and (other, seed, n) in acc
    }


def paired_differences(results: Results, strategy: str, other: str) -> dict[int, list[float]]:
    """Per round, ``strategy``'s accuracy minus ``other``'s on each seed both ran: the two
    share the seed's initial labelled set, so these differences carry less noise than the gap
    between the means."""
    out: dict[int, list[float]] = {}
    for (_, n), d in sorted(paired(results, strategy, other).items()):
        out.setdefault(n, []).append(d)
    return out


def aubc(rows: list[ResultRow] | tuple[ResultRow, ...]) -> float | None:
    """Area under one run's budget curve: accuracy integrated over the labelled ratio
    (trapezoids, round 0 included) and divided by the ratio's range, i.e. the mean accuracy
    along the budget; None for fewer than two evaluated rounds."""
    pts = sorted((r.labelled_ratio, r.accuracy) for r in rows if r.accuracy is not None)
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def aubc_by_seed(results: Results) -> dict[str, dict[int, float]]:
    """Per strategy, per seed: :func:`aubc` of each run that has a seed and two evaluated
    rounds."""
    out: dict[str, dict[int, float]] = {}
    for run in results.runs:
        value = aubc(run.rows)
        if value is not None and run.seed is not None:
            out.setdefault(run.strategy, {})[run.seed] = value
    return out


def pct(x: float | None, digits: int = 1) -> str:
    """``0.4243`` -> ``"42.4"``; ``–`` for None."""
    return "–" if x is None else f"{100 * x:.{digits}f}"


def generates(strategy: str) -> bool:
    """Whether ``strategy`` makes x_g (False for a name this dgaal does not know)."""
    known = STRATEGIES.get(strategy)
    return bool(known and known.generate)
