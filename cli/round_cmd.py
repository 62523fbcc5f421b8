"""``dgaal round`` (one active-learning round) and ``dgaal label`` (a person's answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dgaal_core.errors import DgaalError

from .common import (
    AddressOpt,
    CoevolveStepsOpt,
    D1InputOpt,
    DepthLimitOpt,
    DeviceOpt,
    EngineName,
    EngineOpt,
    EpochsOpt,
    GanStepsOpt,
    GeneratedCapOpt,
    NoiseSkipsOpt,
    NoiseSpreadOpt,
    PmseWeightOpt,
    PoolOpt,
    PresetOpt,
    ProviderOpt,
    RetrainGanOpt,
    SeedOpt,
    ShortlistOpt,
    TaskEpochsOpt,
    TaskMinStepsOpt,
    TaskModelOpt,
    TaskWeightOpt,
    WorkdirOpt,
    WorkersOpt,
    handle_errors,
    handle_errors_deferred,
    method_settings,
    ray_options,
    set_torch_threads,
)


def _split(total: int, real: int | None) -> str:
    """``750 (725 real + 25 generated)``: a count of rows, real and generated."""
    return f"{total} ({real} real + {total - real} generated)" if real is not None else str(total)


def _summary(record: Any) -> None:
    """The finished round as a table (``record``: a RoundRecord)."""
    from rich.console import Console
    from rich.table import Table

    acc = record.accuracy
    table = Table(title=f"round {record.round} ({record.strategy})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("selected", len(record.selected)),
        (
            "oracle queries (this round / total)",
            f"{record.oracle_queries} / {record.oracle_queries_total}",
        ),
        ("free labels (generated images picked)", record.free_labels),
        ("generated images added", record.generated_added),
        ("labelled", _split(record.labelled, record.labelled_real)),
        (
            "labelled / real images (the paper's ratio)",
            f"{record.labelled} / {record.real_images} ({100 * record.labelled_ratio:.1f}%)",
        ),
        ("candidates left", _split(record.candidates, record.candidates_real)),
        ("test accuracy", "n/a (no test split)" if acc is None else f"{100 * acc:.2f}%"),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    times = record.timings
    table.add_row("time by phase", "  ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    Console().print(table)


def round_command(
    pool: PoolOpt,
    strategy: Annotated[
        str,
        typer.Option(
            help="dgaal | dgaal-paper | vaal | vaal-coevo | random | entropy | margin | coreset "
            "| badge | typiclust. On a pool without labels the first round picks at random (by "
            "typicality with embeddings) whatever is asked."
        ),
    ] = "dgaal",
    budget: Annotated[
        str, typer.Option(help="Images to select: a fraction of the real images (0.05) or a count.")
    ] = "0.05",
    take_all: Annotated[
        bool,
        typer.Option(
            "--take-all",
            help="When --budget exceeds the candidates left, label them all (else refused).",
        ),
    ] = False,
    oracle: Annotated[
        str, typer.Option(help="simulated (answers from stored truth) | human | auto.")
    ] = "auto",
    preset: PresetOpt = "small",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    provider: ProviderOpt = "auto",
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
    augment_ratio: Annotated[
        float, typer.Option(help="Share of x_g that joins the labelled set directly (sec. 4.3.2).")
    ] = 0.0,
    task_model: TaskModelOpt = "cnn",
    d1_input: D1InputOpt = "auto",
    workdir: WorkdirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    engine: EngineOpt = EngineName.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Roll back the unfinished round instead (only before its labels are committed).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="With --abandon: discard answers already imported, too."),
    ] = False,
) -> None:
    """Run one active-learning round, or finish an interrupted one.

    Phases: train (Algorithm 1), export to ONNX, score candidates, select, label (oracle),
    co-evolve D1, generate x_g = G(x_s), train and evaluate T. With --abandon: roll back a round
    that stopped before committing labels, or that waits for a person's answers.
    """
    if abandon:
        _abandon(pool, workdir, yes)
        return
    from dgaal_core.loop.config import RoundConfig  # no torch yet: bad settings fail fast
    from dgaal_core.values import parse_size

    try:
        cfg = RoundConfig(
            strategy=strategy, budget=parse_size(budget, "--budget"), oracle=oracle,
            preset=preset, seed=seed, device=device, gan_epochs=epochs, gan_steps=gan_steps,
            task_epochs=task_epochs, coevolve_steps=coevolve_steps,
            depth_limit=depth_limit, augment_ratio=augment_ratio, take_all=take_all,
            task_model=task_model,
            d1_input=d1_input,
            **method_settings(
                task_min_steps, shortlist, task_weight, generated_cap, retrain_gan, pmse_weight,
                noise_spread, noise_skips,
            ),
        )  # fmt: skip
    except ValueError as e:  # ConfigError and unknown strategies: one line, like every error
        raise DgaalError(str(e)) from None
    ray = ray_options(engine, address, workers, provider, None)
    from dgaal_core.loop.round import AwaitingLabels, Round
    from export.embed import round_embedder
    from export.round_backend import onnx_exporter

    from .progress import StageProgress, progress_line

    set_torch_threads(preset)
    log = progress_line  # --quiet hides the bars, not what the round has to say
    with StageProgress(enabled=not quiet) as bars:
        exporter = onnx_exporter(
            provider=provider, progress=bars.stage("Scoring candidates"), ray=ray
        )
        embedder = round_embedder(provider)

        def one_round() -> tuple[Round, Any]:
            job = Round(
                pool, cfg, exporter, workdir=workdir, progress=bars, log=log, embedder=embedder
            )
            return job, job.run()

        job, outcome = one_round()
        if job.finished_interrupted is not None:  # as documented: then the round asked for
            _summary(outcome)
            log(f"round {job.finished_interrupted} finished; now the round asked for")
            job, outcome = one_round()
    if isinstance(outcome, AwaitingLabels):
        if not outcome.new:  # run again before the answers are in: an error, as before
            raise DgaalError(outcome.message)
        typer.echo(outcome.message)
        return
    _summary(outcome)


def _abandon(pool: Path, workdir: Path | None, yes: bool) -> None:
    from dgaal_core.loop.abandon import abandon_round

    out = abandon_round(pool, workdir, discard_answers=yes)
    if out.phase is None:
        what = "it had written nothing to the pool"
    else:
        what = f"{out.requeued} queried images are candidates again"
        if out.answers_discarded:
            what += f" ({out.answers_discarded} answers already imported discarded)"
        if out.free_undone:
            what += f", {out.free_undone} free labels undone"
    kept = f"; its folder is kept as {out.folder}" if out.folder else ""
    typer.echo(f"round {out.round} abandoned: {what}{kept}")


def label_command(
    pool: PoolOpt,
    answers: Annotated[
        Path,
        typer.Argument(
            help="queries.csv with its label column filled in, or a Label Studio export of the "
            "round's tasks (JSON, JSON-MIN, CSV or TSV)."
        ),
    ],
) -> None:
    """Import a person's answers for the queried images of the current round."""
    from dgaal_core.loop.oracle import apply_answers
    from dgaal_core.values import plural

    out = apply_answers(pool, answers)
    notes = [
        f"{out.skipped} skipped or not annotated" if out.skipped else "",
        f"{out.already} imported before" if out.already else "",
        f"{plural(out.other_rounds, 'task')} of other rounds ignored" if out.other_rounds else "",
    ]
    said = "".join(f"; {x}" for x in notes if x)
    left = out.still_queried
    more = (
        f"; {left} still waiting ({out.waiting_ids()})"
        if left
        else "; run `dgaal round` to finish the round"
    )
    typer.echo(f"round {out.round}: {plural(out.answered, 'answer')} imported{said}{more}")


def register(app: typer.Typer) -> None:
    """Add ``round`` and ``label`` to the top-level app."""
    app.command("round")(handle_errors_deferred(round_command))
    app.command("label")(handle_errors(label_command))
