"""``dgaal score``: score pool images with ``sampler.onnx`` on onnxruntime (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dgaal_core.errors import DgaalError

from .common import (
    AddressOpt,
    EngineName,
    EngineOpt,
    ModelOpt,
    PoolOpt,
    ProviderOpt,
    WorkersOpt,
    handle_errors,
    ray_options,
)


@handle_errors
def score(
    model: ModelOpt,
    pool: PoolOpt,
    state: Annotated[
        str,
        typer.Option(
            "--state", help="Rows to score: unlabelled, labelled, queried, excluded or all."
        ),
    ] = "unlabelled",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write id,score rows to a .csv or a structured .npy file."),
    ] = None,
    provider: ProviderOpt = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Images per run (default 256 on CPU, 1024 on CUDA)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")
    ] = None,
    lowest: Annotated[
        int, typer.Option("--lowest", help="Show this many lowest-score ids (the selection).")
    ] = 10,
    engine: EngineOpt = EngineName.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Score every pool row in --state with D1(G1(x)); the lowest scores are what DGAAL selects."""
    import numpy as np

    from export.runtime import SamplerSession, parse_state, select_lowest

    from .progress import StageProgress

    if out is not None and out.suffix not in (".csv", ".npy"):
        raise DgaalError(f"--out {out}: expected a .csv or .npy file name")
    if batch_size is not None and batch_size < 1:
        raise DgaalError(f"--batch-size: expected a positive integer, got {batch_size}")
    if threads is not None and threads < 1:
        raise DgaalError(f"--threads: expected a positive integer, got {threads}")
    if lowest < 0:
        raise DgaalError(f"--lowest: expected an integer >= 0, got {lowest}")
    ray = ray_options(engine, address, workers, provider, batch_size)
    sampler = SamplerSession(model, provider="cpu" if ray else provider, threads=threads)
    with StageProgress(unit="images") as bars:
        if ray is None:
            result = sampler.score_pool(
                pool, state=parse_state(state), batch_size=batch_size, progress=bars.stage("score")
            )
        else:
            from export.distributed import score_pool_ray

            result = score_pool_ray(
                model, pool, state=parse_state(state), options=ray, progress=bars.stage("score")
            )
    if out is not None:
        write_scores(out, result.ids, result.scores)
    how = sampler.info.precision
    if sampler.exact is not None:
        how += f" + fp32 rescoring of the lowest {sampler.rescore_fraction:.0%}"
    typer.echo(
        f"scored {result.ids.size} images of {pool} in {result.seconds:.2f} s "
        f"({result.images_per_second:,.0f} images/s, "
        f"{'Ray' if ray else sampler.provider}, {how})" + (f"; wrote {out}" if out else "")
    )
    chosen = select_lowest(result.ids, result.scores, lowest)
    if chosen.size:
        at = np.searchsorted(result.ids, chosen)  # result.ids is ascending
        pairs = ", ".join(f"{i}:{s:.4g}" for i, s in zip(chosen, result.scores[at], strict=True))
        typer.echo(f"lowest {chosen.size} (id:score): {pairs}")


def write_scores(path: Path, ids: Any, scores: Any) -> None:
    """``id,score`` CSV or a structured .npy array with fields id (int64) and score (float32)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        table = np.empty(ids.size, dtype=[("id", "<i8"), ("score", "<f4")])
        table["id"], table["score"] = ids, scores
        np.save(path, table)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,score\n")
        np.savetxt(f, np.column_stack([ids, scores]), fmt=["%d", "%.9g"], delimiter=",")


def register(app: typer.Typer) -> None:
    """Add ``score`` to the top-level app."""
    app.command("score")(score)
