"""Two strategies from two ``al_curve.py`` result folders, paired seed by seed.

A variant of a strategy (another setting) is run into its own folder; this compares it with the
reference run in another folder on the seeds both have (the same seed means the same initial
labelled set): AUBC difference per seed, mean +- sd, the seeds on which the variant was at least
as high, accuracy differences per round, and cumulative oracle queries at the last round::

    python benchmarks/compare_runs.py VARIANT_DIR REFERENCE_DIR [--strategy dgaal]
        [--reference-strategy dgaal]

The runs must share a source and a schedule (refused otherwise): only then are their rounds the
same labelled counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from dgaal_core.experiment.curves import aubc
from dgaal_core.experiment.results import Results, load_results


def _runs(results: Results, strategy: str) -> dict[int, list]:
    return {
        run.seed: sorted(run.rows, key=lambda r: r.labelled_ratio)
        for run in results.runs
        if run.strategy == strategy and run.seed is not None and len(run.rows) > 1
    }


def compare(a: Path, b: Path, strategy: str, reference: str) -> dict:
    """The paired comparison of ``strategy`` in folder ``a`` with ``reference`` in folder ``b``."""
    ra, rb = load_results(a / "results.json"), load_results(b / "results.json")
    if ra.source != rb.source or list(ra.targets) != list(rb.targets):
        raise SystemExit(f"{a} and {b}: different sources or schedules; nothing to pair")
    va, vb = _runs(ra, strategy), _runs(rb, reference)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        raise SystemExit(f"no seed has both {strategy} in {a} and {reference} in {b}")
    rows = []
    for s in seeds:
        x, y = va[s], vb[s]
        rows.append(
            {
                "seed": s,
                "aubc": (100 * aubc(x), 100 * aubc(y)),  # type: ignore[operator]
                "per_round": [
                    100 * (p.accuracy - q.accuracy)
                    for p, q in zip(x, y, strict=False)
                    if p.accuracy is not None and q.accuracy is not None
                ],
                "queries": (x[-1].oracle_queries_total, y[-1].oracle_queries_total),
            }
        )
    diffs = [r["aubc"][0] - r["aubc"][1] for r in rows]
    n_rounds = min(len(r["per_round"]) for r in rows)
    return {
        "seeds": seeds,
        "rows": rows,
        "mean": statistics.fmean(diffs),
        "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "wins": sum(d >= 0 for d in diffs),
        "per_round_mean": [
            statistics.fmean(r["per_round"][i] for r in rows) for i in range(n_rounds)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variant", type=Path)
    ap.add_argument("reference", type=Path)
    ap.add_argument("--strategy", default="dgaal")
    ap.add_argument("--reference-strategy", default=None, help="default: --strategy")
    args = ap.parse_args()
    ref = args.reference_strategy or args.strategy
    c = compare(args.variant, args.reference, args.strategy, ref)
    out = sys.stdout.write
    out(f"{args.strategy} in {args.variant} minus {ref} in {args.reference}\n")
    out("| seed | AUBC | reference | difference | per round (points) | queries at the end |\n")
    out("|---|---|---|---|---|---|\n")
    for r in c["rows"]:
        per = " ".join(f"{d:+.2f}" for d in r["per_round"])
        q = f"{r['queries'][0]} / {r['queries'][1]}"
        a, b = r["aubc"]
        out(f"| {r['seed']} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {per} | {q} |\n")
    per = " ".join(f"{d:+.2f}" for d in c["per_round_mean"])
    out(
        f"| mean | | | {c['mean']:+.2f} ± {c['sd']:.2f} ({c['wins']}/{len(c['seeds'])}) "
        f"| {per} | |\n"
    )


if __name__ == "__main__":
    main()
