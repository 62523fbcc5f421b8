"""``dgaal report``: plots and a Markdown summary of an experiment, or of one pool's rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dgaal_core.errors import DgaalError

from .common import handle_errors


def report_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs and summary.md.")],
    results: Annotated[
        Path | None, typer.Option("--results", help="results.json of `dgaal experiment`.")
    ] = None,
    pool: Annotated[
        Path | None, typer.Option("--pool", help="A pool: report on its own round log.")
    ] = None,
    round_no: Annotated[
        int | None,
        typer.Option(
            "--round", help="Round whose selection the contact sheet shows (default: last)."
        ),
    ] = None,
    band: Annotated[
        str, typer.Option(help="Band around the mean accuracy: minmax | sd (over seeds).")
    ] = "minmax",
) -> None:
    """Plots and a Markdown summary of an experiment, or of one pool's rounds.

    Writes accuracy.png (accuracy vs labelled ratio, band over seeds), oracle_queries.png
    (annotation cost), accuracy_vs_queries.png, selection.png (one round's selection, generated
    images framed in red) and summary.md.
    """
    from dgaal_core.experiment.report import report_from, write_report

    from .progress import console

    if band not in ("minmax", "sd"):
        raise DgaalError(f"--band {band}: expected minmax or sd")
    data, base = report_from(results_path=results, pool=pool)
    files = write_report(data, out, pool=pool, round_no=round_no, base=base, band=band)
    for f in files:
        console.print(f"wrote {f}")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the top-level app."""
    app.command("report")(handle_errors(report_command))
