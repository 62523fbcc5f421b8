"""``dgaal export``: a round's G1 + D1 and G as checked ONNX files (sampler.onnx, generator.onnx).

torch is imported inside the command only (``dgaal --help`` stays light).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dgaal_core.errors import DgaalError

from .common import PoolOpt, PresetOpt, SeedOpt, WorkdirOpt, handle_errors, human_bytes


@handle_errors
def export(
    pool: PoolOpt,
    workdir: WorkdirOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output folder. Default: the round's folder beside the checkpoint."
        ),
    ] = None,
    round_index: Annotated[
        int | None,
        typer.Option("--round", help="Round whose checkpoint to export (default: the latest)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Export this checkpoint file instead of a round's."),
    ] = None,
    untrained: Annotated[
        bool,
        typer.Option("--untrained", help="Export freshly initialised models (tests, benchmarks)."),
    ] = False,
    preset: PresetOpt = "small",
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Also write sampler.int8.onnx for CPUs, kept only if its selection agrees "
            "with fp32 on >= 99% of ids, alone or with fp32 rescoring of its lowest scores "
            "(`dgaal score` then rescores automatically).",
        ),
    ] = False,
    int8_images: Annotated[
        int, typer.Option("--int8-images", help="Pool images to compare int8 with fp32 on.")
    ] = 4096,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also write fp16 models (for GPUs).")
    ] = False,
    triton: Annotated[
        Path | None,
        typer.Option("--triton", help="Also write a Triton Inference Server model repository."),
    ] = None,
    dynamo: Annotated[
        bool,
        typer.Option("--dynamo/--torchscript", help="torch.onnx exporter (default TorchScript)."),
    ] = False,
    seed: SeedOpt = 0,
) -> None:
    """Export the sampler (uint8 images -> score, latent) and the generator (uint8 -> uint8).

    Loads ``<workdir>/round-NNNN/checkpoint.pt`` (--workdir: the folder ``dgaal round
    --workdir`` used; default ``<pool stem>.dgaal``), or --checkpoint, exports both graphs
    with the pixel transforms inside, runs the ONNX checker and a parity check against PyTorch on
    pool images, and writes the files only if every check passes.
    """
    from rich.console import Console
    from rich.table import Table

    from dgaal_core.loop.workdir import round_dir, work_dir
    from dgaal_core.pool.reader import PoolReader
    from export.pipeline import (
        CALIBRATION_IMAGES,
        PARITY_IMAGES,
        export_round,
        load_models,
        sample_pool_images,
    )

    err = Console(stderr=True)
    if untrained and checkpoint is not None:
        raise DgaalError("--untrained and --checkpoint exclude each other")
    models = load_models(
        pool,
        workdir=workdir,
        round_index=round_index,
        checkpoint=checkpoint,
        untrained_preset=preset if untrained else None,
        seed=seed,
    )
    if out is None:
        if untrained:
            raise DgaalError("--out DIR is needed with --untrained")
        folder = workdir if workdir is not None else work_dir(pool)
        out = checkpoint.parent if checkpoint else round_dir(folder, models.round_index)
    with PoolReader(pool) as reader:
        parity = sample_pool_images(reader, PARITY_IMAGES, seed)
        calib = agree = None
        if int8:
            calib = sample_pool_images(reader, CALIBRATION_IMAGES, seed + 1)
            agree = sample_pool_images(reader, int8_images, seed + 2)
    with err.status(f"exporting {models.source} (round {models.round_index})...", spinner="dots"):
        report = export_round(
            models, out, parity, int8=int8, calibration_images=calib, agreement_images=agree,
            fp16=fp16, triton_dir=triton, dynamo=dynamo, seed=seed,
        )  # fmt: skip
    table = Table(title=f"exported in {report.seconds:.1f} s", title_justify="left")
    for col in ("file", "size", "check"):
        table.add_column(col)
    sp, gp = report.sampler_parity, report.generator_parity
    table.add_row(
        str(report.sampler),
        human_bytes(report.sampler.stat().st_size),
        f"score diff {sp.score_max_abs_diff:.1e}, lowest {sp.selected} of {sp.images} same",
    )
    if report.sampler_head is not None:
        table.add_row(
            str(report.sampler_head),
            human_bytes(report.sampler_head.stat().st_size),
            "P + D1 on stored embeddings; the sampler above contains it and the encoder",
        )
    table.add_row(
        str(report.generator),
        human_bytes(report.generator.stat().st_size),
        f"max pixel diff {gp.max_pixel_diff} on {gp.images} images",
    )
    if report.int8 is not None and report.int8.path is not None:
        size = human_bytes(report.int8.path.stat().st_size)
        i8 = report.int8
        check = f"{i8.mode}: agreement {i8.agreement:.1%}, cascaded {i8.cascade_agreement:.1%}"
        table.add_row(str(i8.path), size, check)
    for p in report.fp16:
        table.add_row(str(p), human_bytes(p.stat().st_size), "fp16, checked on CPU")
    Console().print(table)
    if report.int8 is not None:
        typer.echo(report.int8.message)
    if report.fp16_message:
        typer.echo(report.fp16_message)
    if report.triton:
        typer.echo(f"triton model repository: {triton} ({len(report.triton)} files)")


def register(app: typer.Typer) -> None:
    """Add ``export`` to the top-level app."""
    app.command("export")(export)
