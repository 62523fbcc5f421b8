"""The report's PNG figures, drawn with matplotlib's object API (no pyplot, no global backend):
accuracy vs labelled ratio (Fig. 3/6), oracle queries vs labelled ratio (Fig. 5), accuracy vs
oracle queries, and a selection contact sheet with generated images framed in red (Fig. 4).

matplotlib is the optional ``report`` extra: :func:`require_matplotlib` names the fix when it is
missing. Colours are the Okabe-Ito palette (colour-blind safe), fixed per strategy, with distinct
markers and line styles so the figures survive grey-scale printing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.experiment.results import Results
from dgaal_core.loop.state import round_records
from dgaal_core.pictures import contact_sheet
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dgaal_core.experiment.curves import Point

DPI = 150
SHEET_MAX = 100  # the paper shows 100 of the selected images
# Okabe-Ito colours, one per strategy; unknown names cycle through the rest
STYLE: dict[str, tuple[str, str, str]] = {  # name -> (colour, marker, line style)
    "dgaal": ("#D55E00", "o", "-"),
    "vaal": ("#0072B2", "s", "--"),
    "vaal-coevo": ("#009E73", "^", "-."),
    "random": ("#000000", "D", ":"),
    "entropy": ("#E69F00", "v", "--"),
    "coreset": ("#CC79A7", "P", "-."),
}
SPARE = [("#56B4E9", "X", "-"), ("#F0E442", "*", "--"), ("#999999", "h", ":")]
LABELS = {"dgaal": "DGAAL", "vaal": "VAAL", "vaal-coevo": "VAAL + co-evolution"}


class ReportError(DgaalError):
    """A report cannot be drawn (matplotlib missing, nothing to show)."""


def require_matplotlib() -> None:
    """Raise :class:`ReportError` with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError(
            "the report needs matplotlib, which is not installed: "
            "pip install 'dgaal[report]' (or pip install matplotlib)"
        ) from None


def _style(strategy: str, order: list[str]) -> tuple[str, str, str]:
    if strategy in STYLE:
        return STYLE[strategy]
    unknown = [s for s in order if s not in STYLE]
    return SPARE[unknown.index(strategy) % len(SPARE)] if strategy in unknown else SPARE[0]


def _label(strategy: str) -> str:
    return LABELS.get(strategy, strategy)


def dataset_title(results: Results) -> str:
    """A short description for titles: ``"1438 training images, 3 seeds"``."""
    seeds = {r.seed for r in results.runs}
    parts = []
    if results.real_images:
        parts.append(f"{results.real_images} training images")
    parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    return ", ".join(parts)


def _figure(width: float = 6.4, height: float = 4.2) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _percent_axis(ax: Axes, axis: str) -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{100 * v:g}%")
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(fmt)


MIN_ACCURACY_SPAN = 0.05  # an accuracy axis spans at least 5 points: noise stays small


def _accuracy_span(ax: Axes) -> None:
    """Widen a flat accuracy axis (one pool, a few rounds) to at least MIN_ACCURACY_SPAN inside
    [0, 1], so a 0.2-point wiggle is not drawn as a cliff with 42.575% ticks."""
    lo, hi = ax.get_ylim()
    if hi - lo < MIN_ACCURACY_SPAN:
        mid = (lo + hi) / 2
        lo = min(max(0.0, mid - MIN_ACCURACY_SPAN / 2), 1.0 - MIN_ACCURACY_SPAN)
        ax.set_ylim(lo, lo + MIN_ACCURACY_SPAN)


def _legend(fig: Figure, ax: Axes) -> None:
    """The legend below the axes, in one or two rows, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 5 and sum(len(x) for x in labels) < 40:  # handles take room too
        ncol = len(labels)
    else:  # as many columns as the longest entry allows across the figure, rows balanced
        fit = max(1, min(len(labels), 96 // (max(len(x) for x in labels) + 6)))
        rows = -(-len(labels) // fit)
        ncol = -(-len(labels) // rows)
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, ncol), fontsize=9,
               frameon=False)  # fmt: skip


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _line(ax: Axes, strategy: str, order: list[str], xs: Any, ys: Any) -> None:
    colour, marker, ls = _style(strategy, order)
    ax.plot(xs, ys, color=colour, marker=marker, linestyle=ls, linewidth=1.8, markersize=5,
            label=_label(strategy))  # fmt: skip


def plot_accuracy(
    agg: dict[str, list[Point]], path: Path, *, title: str = "", band: str = "minmax"
) -> Path:
    """Mean test accuracy vs labelled ratio per strategy, with a band over the seeds
    (``band="minmax"`` or ``"sd"`` for ±1 standard deviation)."""
    fig, ax = _figure()
    order = list(agg)
    multi = False  # any band drawn
    for strategy, pts in agg.items():
        pts = [p for p in pts if p.acc_mean is not None]
        if not pts:
            continue
        xs = np.array([p.ratio for p in pts])
        mean = np.array([p.acc_mean for p in pts], dtype=float)
        if band == "sd":
            sd = np.array([p.acc_sd or 0.0 for p in pts])
            lo, hi = mean - sd, mean + sd
        else:
            lo = np.array([p.acc_min for p in pts], dtype=float)
            hi = np.array([p.acc_max for p in pts], dtype=float)
        if max(p.seeds for p in pts) > 1:
            multi = True
            ax.fill_between(xs, lo, hi, color=_style(strategy, order)[0], alpha=0.10, linewidth=0)
        _line(ax, strategy, order, xs, mean)
    _percent_axis(ax, "x")
    _percent_axis(ax, "y")
    _accuracy_span(ax)
    ax.set_xlabel("labelled images (% of the real training images)")
    ax.set_ylabel("test accuracy (%)")
    what = "min–max" if band != "sd" else "±1 sd"
    note = f"lines: mean, bands: {what} over seeds" if multi else ""
    # a pool's own log counts its initial labelled set but never evaluated T on it: say so
    unmeasured = sorted({p.ratio for pts in agg.values() for p in pts if p.acc_mean is None})
    gap = "no accuracy at " + ", ".join(f"{100 * r:.3g}%" for r in unmeasured) if unmeasured else ""
    subtitle = "; ".join(x for x in (title, note, gap) if x)
    ax.set_title("Test accuracy vs labelled data" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=11)  # fmt: skip
    _legend(fig, ax)
    return _save(fig, path)


def plot_queries(agg: dict[str, list[Point]], path: Path, *, title: str = "") -> Path:
    """Cumulative oracle queries vs labelled ratio (the paper's Fig. 5): the gap below the
    non-generating strategies is the annotation saved by generated images."""
    fig, ax = _figure()
    order = list(agg)
    at = {(s, round(p.ratio, 4)): p.queries for s, pts in agg.items() for p in pts}
    for strategy, pts in agg.items():
        if not pts:
            continue
        _line(ax, strategy, order, [p.ratio for p in pts], [p.queries for p in pts])
        last = pts[-1]  # relative cost against the dearest strategy at the same ratio
        ref = max(q for (_, r), q in at.items() if r == round(last.ratio, 4))
        if ref > 0 and last.queries < ref - 0.5:
            ax.lines[-1].set_label(
                f"{_label(strategy)}: {100 * last.queries / ref:.1f}% of the queries "
                f"at {100 * last.ratio:.0f}%"
            )
    _percent_axis(ax, "x")
    ax.set_xlabel("labelled images (% of the real training images)")
    ax.set_ylabel("oracle queries (cumulative, images)")
    ax.set_title(
        "Annotation cost: oracle queries vs labelled data" + (f"\n{title}" if title else ""),
        fontsize=11,
    )
    _legend(fig, ax)
    return _save(fig, path)


def plot_accuracy_vs_queries(agg: dict[str, list[Point]], path: Path, *, title: str = "") -> Path:
    """Mean test accuracy vs cumulative oracle queries: strategies compared at equal cost."""
    fig, ax = _figure()
    order = list(agg)
    for strategy, pts in agg.items():
        pts = [p for p in pts if p.acc_mean is not None]
        if pts:
            _line(ax, strategy, order, [p.queries for p in pts], [p.acc_mean for p in pts])
    _percent_axis(ax, "y")
    _accuracy_span(ax)
    ax.set_xlabel("oracle queries after the initial labelled set (images)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.set_title("Test accuracy vs annotation cost" + (f"\n{title}" if title else ""), fontsize=11)
    _legend(fig, ax)
    return _save(fig, path)


def plot_selection(pool: Path, path: Path, *, round_no: int | None = None) -> Path | None:
    """Contact sheet of round ``round_no``'s selection (default: the last round) in ``pool``,
    generated images framed in red (the paper's Fig. 4). None when the pool has no rounds."""
    with PoolReader(pool) as r:
        rounds = round_records(r)
        if not rounds:
            return None
        by_no = {x.round: x for x in rounds}
        n = max(by_no) if round_no is None else round_no
        if n not in by_no:
            raise ReportError(f"{pool}: no round {n}; it has rounds {min(by_no)}..{max(by_no)}")
        record = by_no[n]
        ids = np.asarray(record.selected, dtype=np.int64)
        rng = np.random.default_rng(n)  # a fixed, mixed sample like the paper's
        ids = rng.permutation(ids)[:SHEET_MAX]
        images = r.read_images(ids)
        generated = r.fields["origin"][ids] == Origin.GENERATED
        labels = r.labels[ids]
        names = r.class_names
    cols = int(min(20, max(1, np.ceil(np.sqrt(len(ids) * 2)))))
    sheet = contact_sheet(images, framed=generated, cols=cols, cell=48, pad=6,
                          captions=[names[k] if k >= 0 else "?" for k in labels])  # fmt: skip
    from matplotlib.figure import Figure

    width, height = sheet.size
    fig = Figure(
        figsize=(max(6.4, width / DPI + 0.3), height / DPI + 0.8), dpi=DPI, layout="constrained"
    )
    ax = fig.add_subplot()
    ax.imshow(np.asarray(sheet), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(
        f"Round {n} selection ({record.strategy}): {len(record.selected)} images, "
        f"{record.oracle_queries} oracle queries, {record.free_labels} free labels\n"
        f"{int(generated.sum())} of the {len(ids)} shown are generated (red frames); "
        "captions: labels",
        fontsize=9,
    )
    return _save(fig, path)
