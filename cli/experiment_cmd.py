"""``dgaal experiment``: every strategy x seed on copies of a pool, round after round (the
paper's protocol), into one ``results.json``; resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dgaal_core.errors import DgaalError

from .common import (
    CoevolveStepsOpt,
    D1InputOpt,
    DepthLimitOpt,
    DeviceOpt,
    EpochsOpt,
    GanStepsOpt,
    GeneratedCapOpt,
    NoiseSkipsOpt,
    NoiseSpreadOpt,
    PmseWeightOpt,
    PresetOpt,
    ProviderOpt,
    RetrainGanOpt,
    ShortlistOpt,
    TaskEpochsOpt,
    TaskMinStepsOpt,
    TaskModelOpt,
    TaskWeightOpt,
    handle_errors_deferred,
    method_settings,
    set_torch_threads,
)

if TYPE_CHECKING:
    from rich.table import Table

    from dgaal_core.experiment.curves import Point


def results_table(
    agg: dict[str, list[Point]], title: str = "test accuracy (oracle queries)"
) -> Table:
    """A rich table: strategy x labelled ratio, cells ``accuracy% (queries)``."""
    from rich.table import Table

    ratios = sorted({round(100 * p.ratio, 1) for pts in agg.values() for p in pts})
    table = Table(title=title)
    table.add_column("strategy", style="bold")
    for r in ratios:
        table.add_column(f"{r:g}%", justify="right")
    for strategy, pts in agg.items():
        cells = {round(100 * p.ratio, 1): p for p in pts}
        row = []
        for r in ratios:
            p = cells.get(r)
            acc = "–" if p is None or p.acc_mean is None else f"{100 * p.acc_mean:.1f}%"
            row.append("–" if p is None else f"{acc} ({p.queries:.0f})")
        table.add_row(strategy, *row)
    return table


def experiment_command(
    pool: Annotated[
        Path, typer.Option("--pool", help="Source pool (needs ground truth and a test split).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Experiment folder (results.json, runs/).")],
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: dgaal, dgaal-paper, vaal, vaal-coevo, random, entropy, "
            "margin, coreset, badge."
        ),
    ] = "dgaal,vaal,vaal-coevo,random",
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds (one initial set each).")
    ] = "0,1,2",
    initial: Annotated[
        str, typer.Option(help="Initial labelled set: a fraction of the real images or a count.")
    ] = "0.1",
    step: Annotated[
        str, typer.Option(help="Images added per round: a fraction or a count.")
    ] = "0.05",
    until: Annotated[
        str, typer.Option(help="Stop at this labelled size: a fraction or a count.")
    ] = "0.4",
    preset: PresetOpt = "small",
    epochs: EpochsOpt = None,
    gan_steps: GanStepsOpt = None,
    task_epochs: TaskEpochsOpt = None,
    coevolve_steps: CoevolveStepsOpt = None,
    task_min_steps: TaskMinStepsOpt = None,
    shortlist: ShortlistOpt = None,
    task_weight: TaskWeightOpt = None,
    generated_cap: GeneratedCapOpt = None,
    retrain_gan: RetrainGanOpt = None,
    pmse_weight: PmseWeightOpt = None,
    noise_spread: NoiseSpreadOpt = 0.05,
    noise_skips: NoiseSkipsOpt = False,
    depth_limit: DepthLimitOpt = 2,
    task_model: TaskModelOpt = "cnn",
    d1_input: D1InputOpt = "auto",
    device: DeviceOpt = "auto",
    provider: ProviderOpt = "auto",
    report: Annotated[
        bool, typer.Option("--report", help="Also write the report to OUT/report.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-round lines.")] = False,
) -> None:
    """Run the active-learning protocol (strategies x seeds) into OUT/results.json.

    For every strategy and seed: a fresh copy of POOL with a new initial labelled set (the same
    for every strategy of a seed), then rounds of STEP images until UNTIL. Sizes are fractions of
    the real images (< 1) or counts. Run it again to resume where it stopped.
    """
    from rich.console import Console

    from dgaal_core.experiment.config import ExperimentConfig, Schedule, parse_list
    from dgaal_core.experiment.curves import aggregate
    from dgaal_core.experiment.report import write_report
    from dgaal_core.experiment.runner import Experiment
    from dgaal_core.loop.config import RoundConfig
    from dgaal_core.values import parse_size
    from export.embed import round_embedder
    from export.round_backend import onnx_exporter

    from .progress import progress_line, safe_point

    try:
        config = ExperimentConfig(
            strategies=parse_list(strategies),
            seeds=parse_list(seeds, int),
            schedule=Schedule(
                parse_size(initial, "--initial"),
                parse_size(step, "--step"),
                parse_size(until, "--until"),
            ),
            round=RoundConfig(
                preset=preset, device=device, gan_steps=gan_steps, gan_epochs=epochs,
                task_epochs=task_epochs, coevolve_steps=coevolve_steps, depth_limit=depth_limit,
                task_model=task_model,
                d1_input=d1_input,
                **method_settings(
                    task_min_steps, shortlist, task_weight, generated_cap, retrain_gan,
                    pmse_weight, noise_spread, noise_skips,
                ),
            ),
        )  # fmt: skip
    except ValueError as e:  # ConfigError: one line, like every error
        raise DgaalError(str(e)) from None
    set_torch_threads(preset)
    if report:  # find out now, not after hours of rounds
        from dgaal_core.experiment.plots import require_matplotlib

        require_matplotlib()
    log = (lambda *_: None) if quiet else progress_line
    exp = Experiment(
        pool, out, config, onnx_exporter(provider=provider), progress=safe_point, log=log,
        embedder=round_embedder(provider),
    )  # fmt: skip
    runs = len(config.strategies) * len(config.seeds)
    log(
        f"{runs} runs ({', '.join(config.strategies)} x seeds {list(config.seeds)}), "
        f"labelled counts {exp.targets} of {exp.real} real images"
    )
    results = exp.run()
    agg = aggregate(results)
    stdout = Console()
    stdout.print(results_table(agg))
    stdout.print(f"results: {exp.results_path}")
    if report:
        for f in write_report(results, out / "report", base=out):
            stdout.print(f"wrote {f}")
    else:
        stdout.print(f"plots: dgaal report --results {exp.results_path} --out {out / 'report'}")


def register(app: typer.Typer) -> None:
    """Add ``experiment`` to the top-level app."""
    app.command("experiment")(handle_errors_deferred(experiment_command))
