"""``summary.md`` of a report: accuracy by labelled ratio, at equal oracle queries, queries to
reach random's final accuracy, paired differences seed by seed, the annotation cost and what
the selection did (pure Python over :class:`~dgaal_core.experiment.results.Results`)."""

from __future__ import annotations

import statistics

import numpy as np

from dgaal_core.experiment.curves import (
    Point,
    accuracy_at_queries,
    aggregate,
    aubc_by_seed,
    generates,
    mean,
    paired_differences,
    pct,
    queries_to_reach,
)
from dgaal_core.experiment.results import Results


def _ratio_key(ratio: float) -> float:
    return round(100 * ratio, 1)


def _settings_lines(results: Results) -> list[str]:
    cfg = results.config
    if not cfg:
        return [f"Round log of `{results.source}`."]
    s, r = cfg["schedule"], cfg["round"]
    steps = ", ".join(
        f"{k} {r[k]}"
        for k in ("gan_steps", "gan_epochs", "task_epochs", "coevolve_steps")
        if r.get(k) is not None
    )
    return [
        f"Source: {results.source}; {results.real_images} real training images, "
        f"{results.test_images} test images, {results.num_classes} classes.",
        f"Schedule: initial {s['initial']}, +{s['step']} per round, until {s['until']} "
        f"(labelled counts {list(results.targets)}); seeds "
        f"{', '.join(map(str, cfg['seeds']))}; preset `{r['preset']}`"
        + (f" ({steps})" if steps else "")
        + (f"; T `{r['task_model']}`" if r.get("task_model") not in (None, "cnn") else "")
        + (f"; D1 input `{r['d1_input']}`" if r.get("d1_input") not in (None, "image") else "")
        + ".",
    ]


def summary_markdown(results: Results, agg: dict[str, list[Point]] | None = None) -> str:
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
                sd = f" ± {pct(p.acc_sd)}" if p.seeds > 1 else ""
                row.append(f"{pct(p.acc_mean)}{sd} ({p.queries:.0f})")
        seeds = max((p.seeds for p in pts), default=0)
        lines.append(f"| {strategy} | {seeds} | " + " | ".join(row) + " |")
    lines += _equal_queries_section(agg)
    lines += _aubc_section(results)
    lines += _reach_section(agg)
    lines += _paired_section(results)
    lines += _cost_section(agg)
    lines += _diagnostics_section(results)
    return "\n".join(_tidy_tables(lines)) + "\n"


EMPTY = "–"  # a cell the sections leave empty: nothing measured there
NOT_MEASURED = (
    "n/a: nothing to show there: not measured in these runs (no random run to compare with, no "
    "evaluation of the initial labelled set in a pool's own round log, no x_g in the round, "
    "...), or not reached (as each table's note says)."
)


def _tidy_tables(lines: list[str]) -> list[str]:
    """The Markdown tables without columns that hold nothing, and ``n/a`` (explained once at
    the end) in the cells left empty, instead of bare dashes."""
    out: list[str] = []
    k, any_na = 0, False
    while k < len(lines):
        if not lines[k].startswith("|"):
            out.append(lines[k])
            k += 1
            continue
        end = k
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        rows = [x.strip().strip("|").split("|") for x in lines[k:end]]
        header, rule, body = rows[0], rows[1], rows[2:]
        keep = [c for c in range(len(header)) if any(r[c].strip() != EMPTY for r in body)]
        keep = keep or list(range(len(header)))
        for row in (header, rule, *body):
            if row is rule:
                out.append("|" + "---|" * len(keep))
                continue
            cells = [row[c].strip() for c in keep]
            if row is not header:
                any_na |= any(x.startswith(EMPTY) for x in cells)
                cells = ["n/a" + x[1:] if x.startswith(EMPTY) else x for x in cells]
            out.append("| " + " | ".join(cells) + " |")
        k = end
    return [*out, "", NOT_MEASURED] if any_na else out


def _paired_section(results: Results, strategy: str = "dgaal") -> list[str]:
    """``strategy`` minus each other strategy, per round: mean ± sd of the per-seed differences
    and how many seeds it won."""
    others = [s for s in results.strategies() if s != strategy]
    if strategy not in results.strategies() or not others:
        return []
    ratio_of = {
        row.round: _ratio_key(row.labelled_ratio)
        for run in results.runs
        if run.strategy == strategy
        for row in run.rows
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
            cells.append(f"{100 * mean(d):+.1f}{sd} ({wins}/{len(d)})")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return lines


def _aubc_section(results: Results, baseline: str = "random") -> list[str]:
    """The area under each strategy's budget curve, and its difference to ``baseline``'s on
    the same seeds."""
    by_seed = aubc_by_seed(results)
    if not by_seed:
        return []
    base = by_seed.get(baseline, {})
    lines = [
        "",
        "## Area under the budget curve (AUBC, %)",
        "",
        "Each run's accuracy integrated over the labelled ratio and divided by its range (the "
        f"mean accuracy along the budget); mean ± sd over seeds, then minus {baseline}'s on the "
        f"same seed, with the seeds on which the strategy was at least as high.",
        "",
        f"| strategy | seeds | AUBC | minus {baseline} |",
        "|---|---|---|---|",
    ]
    for strategy, values in by_seed.items():
        v = list(values.values())
        sd = f" ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else ""
        d = [values[k] - base[k] for k in values if k in base]
        diff = "–"
        if d and strategy != baseline:
            dsd = f" ± {100 * statistics.stdev(d):.1f}" if len(d) > 1 else ""
            diff = f"{100 * mean(d):+.1f}{dsd} ({sum(x >= 0 for x in d)}/{len(d)})"
        lines.append(f"| {strategy} | {len(v)} | {100 * mean(v):.1f}{sd} | {diff} |")
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
        f"## Oracle queries to reach {baseline}'s final accuracy ({pct(goal)}%)",
        "",
        "On the mean curves, linear between rounds; n/a where a strategy never gets there.",
        "",
        f"| strategy | queries | share of {baseline}'s {last.queries:.0f} |",
        "|---|---|---|",
    ]
    for strategy, pts in agg.items():
        need = queries_to_reach(pts, goal)
        share = "–" if need is None or not last.queries else f"{100 * need / last.queries:.0f}%"
        lines.append(f"| {strategy} | {'–' if need is None else f'{need:.0f}'} | {share} |")
    return lines


DIAGNOSTICS = (
    "max_class_share",
    "generated_share",
    "d1_auc",
    "generated_distance",
    "label_fidelity",
)


def _diagnostics_section(results: Results) -> list[str]:
    """Per strategy and round (means over seeds): the largest class share among the picks,
    the share of generated picks, D1's AUC (labelled vs candidates), x_g's distance to x_s
    and the label fidelity of x_g."""
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in results.runs:
        for row in run.rows:
            if row.round == 0:
                continue
            cell = table.setdefault((run.strategy, row.round), {k: [] for k in DIAGNOSTICS})
            hist = row.picked_classes
            if hist and sum(hist):
                cell["max_class_share"].append(max(hist) / sum(hist))
            values = (row.generated_share, row.d1_auc, row.generated_distance, row.label_fidelity)
            for k, v in zip(DIAGNOSTICS[1:], values, strict=True):
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
        vals = [mean(cell[k]) if cell[k] else None for k in DIAGNOSTICS]
        text = [
            "–" if v is None else (f"{v:.3f}" if k in ("d1_auc", "generated_distance") else pct(v))
            for k, v in zip(DIAGNOSTICS, vals, strict=True)
        ]
        lines.append(f"| {strategy} | {n} | " + " | ".join(text) + " |")
    return lines


def _equal_queries_section(agg: dict[str, list[Point]]) -> list[str]:
    """Accuracy of every strategy at the query counts of a non-generating reference."""
    ref = next((s for s in ("random", *agg) if s in agg and not generates(s)), None)
    if ref is None or len(agg) < 2:
        return []
    levels = [p.queries for p in agg[ref] if p.round > 0]
    if not levels:
        return []
    lines = [
        "",
        "## Test accuracy (%) at equal oracle queries",
        "",
        f"Mean accuracy interpolated at {ref}'s cumulative query counts (n/a where a strategy's "
        "curve does not reach that count).",
        "",
        "| strategy | " + " | ".join(f"{q:.0f} q" for q in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for strategy, pts in agg.items():
        row = [pct(accuracy_at_queries(pts, q)) for q in levels]
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
            f"| {strategy} | {pct(last.ratio)}% | {'–' if added is None else f'{added:.0f}'} | "
            f"{last.queries:.0f} | {last.free:.1f} | {share} |"
        )
    return lines
