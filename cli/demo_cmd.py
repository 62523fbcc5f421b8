"""``dgaal demo``: the whole method on the built-in digits in a few minutes on a CPU.

Builds a pool from scikit-learn's 8x8 digits, runs a short experiment (DGAAL vs random
sampling, small models), prints the results table, writes the report plots and ends with one
sentence comparing the two. ``--quick`` uses a subset and tiny schedules (seconds; for tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .common import ProviderOpt, handle_errors_deferred, set_torch_threads


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs (chosen to finish in under 3 minutes on 2 CPU cores)."""

    name: str
    train_images: int | None  # None: all 1438 training digits
    test_images: int | None
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial: float
    step: float
    until: float
    gan_steps: int
    task_epochs: int | None  # None: the small preset's (a step budget, see TrainConfig)
    coevolve_steps: int
    task_min_steps: int | None = None


# T trains for at least 400 steps here (the small preset's 1000 would take the demo past 3
# minutes on 2 cores): a noisier T than the benchmarks', which the verdict line accounts for.
FULL = DemoSettings(
    "demo", None, None, ("dgaal", "random"), (0, 1), 0.05, 0.05, 0.25, 200, None, 50,
    task_min_steps=400,
)  # fmt: skip
QUICK = DemoSettings(
    "demo-quick", 300, 100, ("dgaal", "random"), (0,), 0.1, 0.1, 0.3, 8, 2, 4, task_min_steps=0
)


def _digits_pool(path: Path, s: DemoSettings) -> None:
    from dgaal_core.ingest.create import MemorySource, create_pool, load_digits

    d = load_digits(seed=0)
    assert d.y_train is not None and d.x_test is not None and d.y_test is not None
    n, m = s.train_images, s.test_images
    source = MemorySource(
        "digits", "sklearn.datasets.load_digits", d.class_names,
        d.x_train[:n], d.y_train[:n], d.x_test[:m], d.y_test[:m],
    )  # fmt: skip
    create_pool(path, source, initial=s.initial, seed=0, force=True)


def demo_command(
    workdir: Annotated[Path, typer.Option(help="Folder for the pool, the runs and the report.")] = (
        Path("demo-work")
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="A 300-image subset and tiny models (seconds).")
    ] = False,
    provider: ProviderOpt = ("auto"),
) -> None:
    """DGAAL vs random sampling on the built-in digits: results table, plots, one-line verdict.

    Runs again resume (or just re-report) what is in WORKDIR; delete it to start over.
    """
    from rich.console import Console
    from rich.markup import escape

    from dgaal_core.experiment.config import ExperimentConfig, Schedule
    from dgaal_core.experiment.curves import aggregate
    from dgaal_core.experiment.plots import ReportError, require_matplotlib
    from dgaal_core.experiment.report import headline, verdict, write_report
    from dgaal_core.experiment.runner import Experiment
    from dgaal_core.experiment.summary import summary_markdown
    from dgaal_core.loop.config import RoundConfig
    from export.round_backend import onnx_exporter

    from .experiment_cmd import results_table
    from .progress import progress_line, safe_point

    t0 = time.perf_counter()
    set_torch_threads("small")
    s = QUICK if quick else FULL
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"{s.name}-pool.h5"
    if not source.exists():
        _digits_pool(source, s)
    config = ExperimentConfig(
        strategies=s.strategies,
        seeds=s.seeds,
        schedule=Schedule(s.initial, s.step, s.until),
        round=RoundConfig(
            preset="small", gan_steps=s.gan_steps, task_epochs=s.task_epochs,
            coevolve_steps=s.coevolve_steps, task_min_steps=s.task_min_steps,
        ),
    )  # fmt: skip
    out = workdir / s.name
    exp = Experiment(
        source,
        out,
        config,
        onnx_exporter(provider=provider),
        progress=safe_point,
        log=progress_line,
    )
    console = Console()
    console.print(
        f"[bold]dgaal demo[/]: {' vs '.join(s.strategies)} on {exp.real} handwritten 8x8 digits "
        f"({exp.num_test} held out for testing), seed(s) {list(s.seeds)}; labelled set grows "
        f"{exp.targets[0]} -> {exp.targets[-1]} images, the simulated oracle answers the queries"
    )
    console.print(  # which representation T learns on: nothing may download an encoder here
        "T: the small CNN, trained from scratch on the pixels (no encoder; with `dgaal pool "
        "embed` and `--task-model linear` T is a head on an encoder's features)"
    )
    before = exp.results().runs
    if before and all(r.complete for r in before):
        console.print(f"(finished earlier in {out}; delete {workdir} to run it again)")
    results = exp.run()
    agg = aggregate(results)
    console.print(results_table(agg, "test accuracy (cumulative oracle queries), mean over seeds"))
    try:
        require_matplotlib()
        files = write_report(results, workdir / "report", base=out)
    except ReportError as e:  # the plots are an optional extra: still give the summary
        console.print(f"[yellow]no plots: {escape(str(e))}[/]")
        (workdir / "report").mkdir(exist_ok=True)
        files = [workdir / "report" / "summary.md"]
        files[0].write_text(summary_markdown(results, agg))
    console.print("report:")
    for f in files:
        console.print(f"  {f}")
    console.print(f"[dim]done in {time.perf_counter() - t0:.0f} s[/]")
    typer.echo(headline(agg, "dgaal", "random"))
    typer.echo(verdict(results, "dgaal", "random"))


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the top-level app."""
    app.command("demo")(handle_errors_deferred(demo_command))
