"""``dgaal pool embed``: an image encoder's features of every pool and test image, stored beside
the pool (registered on the ``pool`` group by :mod:`cli.pool_cmd`). No torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dgaal_core.errors import DgaalError

from .common import (
    AddressOpt,
    EngineName,
    EngineOpt,
    PoolArg,
    ProviderOpt,
    WorkersOpt,
    ray_options,
)


def _numbers(value: str | None, option: str) -> tuple[float, ...] | None:
    from export.encoder import parse_floats

    if value is None:
        return None
    try:
        return parse_floats(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers like 0.5,0.5,0.5, got {value!r}", param_hint=option
        ) from None


def embed(
    pool: PoolArg,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="ONNX image encoder: uint8 NHWC or float NCHW images in, (N, D) or "
            "(N, D, 1, 1) out.",
            show_default=False,
        ),
    ] = None,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="No encoder at hand: train one on the pool's own images (SimCLR, CPU-sized), "
            "instead of --model.",
        ),
    ] = False,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="--train: SimCLR steps of 256 images.")
    ] = 1500,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            help="--train: stop after this many minutes even if --steps are not done "
            "(then the result depends on the machine's speed).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="--train: seed of every random choice.")] = 0,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            min=1,
            help="Resize images to SIZE x SIZE first (default: the model's fixed input size, "
            "else the pool's own).",
            show_default=False,
        ),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option(
            "--mean",
            help="Float inputs: per-channel mean on [0, 1] pixels (default ImageNet's, or the "
            "model's dgaal.mean metadata).",
            show_default=False,
        ),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option(
            "--std", help="Float inputs: per-channel std (as --mean).", show_default=False
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="nhwc | nchw (default: from the input's shape).",
            show_default=False,
        ),
    ] = None,
    provider: ProviderOpt = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per encoder run (256 CPU, 1024 CUDA)."),
    ] = None,
    engine: EngineOpt = EngineName.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Embed every image of the pool (and its test split) with an image encoder and store the
    embeddings beside the pool (POOL's stem + .embed/), replacing earlier ones. Rows that join
    later (generated images) are embedded with the same encoder by the round that adds them."""
    from export.embed import embed_pool
    from export.encoder import InputSpec

    from .progress import StageProgress

    if (model is None) == (not train):
        raise DgaalError("give --model ENCODER.onnx, or --train to train one on the pool")
    if train:
        given = [o for o, v in (("--size", size), ("--mean", mean), ("--std", std),
                                ("--layout", layout)) if v is not None]  # fmt: skip
        if given:
            raise DgaalError(
                f"{given[0]}: not with --train (the trained encoder takes the pool's pixels)"
            )
        if minutes is not None and not minutes > 0:
            raise DgaalError(f"--minutes {minutes:g}: expected a number of minutes > 0")
        _train(pool, steps, minutes, seed, provider, batch_size, engine, address, workers)
        return
    if layout is not None and layout not in ("nhwc", "nchw"):
        raise typer.BadParameter(f"expected nhwc or nchw, got {layout!r}", param_hint="--layout")
    spec = InputSpec(
        layout=layout,
        size=size,
        mean=_numbers(mean, "--mean"),
        std=_numbers(std, "--std"),
    )
    ray = ray_options(engine, address, workers, provider, batch_size)
    t0 = time.perf_counter()
    with StageProgress() as report:
        manifest, rows = embed_pool(
            pool, model, spec=spec, provider=provider, batch_size=batch_size, progress=report,
            ray=ray,
        )  # fmt: skip
    _say(pool, manifest, rows, t0)


def _say(pool: Path, manifest: Any, rows: int, t0: float) -> None:
    typer.echo(
        f"embedded {rows} images of {pool} ({manifest.rows('pool')} pool, "
        f"{manifest.rows('test')} test) as {manifest.dim}-d vectors with "
        f"{manifest.encoder.get('name')} in {time.perf_counter() - t0:.1f} s"
    )


def _train(
    pool: Path, steps: int, minutes: float | None, seed: int, provider: str,
    batch_size: int | None, engine: EngineName, address: str | None, workers: int | None,
) -> None:  # fmt: skip
    from dgaal_core.model.ssl import SSLConfig
    from export.ssl_encoder import train_and_embed

    from .progress import StageProgress

    ray = ray_options(engine, address, workers, provider, batch_size)
    config = SSLConfig(steps=steps, minutes=minutes, seed=seed)
    t0 = time.perf_counter()
    with StageProgress() as report:
        manifest, rows, _ = train_and_embed(
            pool, config, provider=provider, batch_size=batch_size, progress=report, ray=ray,
            log=typer.echo,
        )  # fmt: skip
    _say(pool, manifest, rows, t0)
