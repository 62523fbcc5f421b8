"""``dgaal pool create``, ``info`` and ``check`` (``embed`` is in :mod:`cli.pool_embed`): make a
pool from images, look inside one, and verify (or repair) one.

No torch here: numpy, h5py and PIL are imported inside the commands, so ``dgaal --help`` stays
fast and the pool commands run where torch is not installed.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dgaal_core.errors import PoolExistsError

from .common import (
    ForceOpt,
    JsonOpt,
    PoolArg,
    SeedOpt,
    handle_errors,
    handle_errors_deferred,
    human_bytes,
)

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Create a pool file from images, show what is in one, check one for damage.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: no markup eats "[ray]", flags show no "<bool>"
)


class SourceKind(str, Enum):
    """Where ``pool create`` reads images from."""

    folder = "folder"
    npz = "npz"
    digits = "digits"


@app.command()
@handle_errors_deferred
def create(
    out: Annotated[Path, typer.Argument(help="Pool file to create (e.g. pools.h5).")],
    from_: Annotated[
        SourceKind,
        typer.Option(
            "--from",
            help="Source kind (see above).",
        ),
    ],
    source: Annotated[
        Path | None, typer.Argument(help="The folder or .npz file (not for digits).")
    ] = None,
    test_dir: Annotated[
        Path | None,
        typer.Option("--test-dir", help="Folder of <class>/ images for the test split."),
    ] = None,
    initial: Annotated[
        float | None,
        typer.Option(
            "--initial",
            help="Labels revealed at the start: a fraction (< 1) or a count (>= 1). "
            "Default 0.1, or 0 when the pool has no ground truth.",
            show_default=False,
        ),
    ] = None,
    stratified: Annotated[
        bool,
        typer.Option("--stratified/--random", help="Same share of every class, or uniform."),
    ] = True,
    seed: SeedOpt = 0,
    no_truth: Annotated[
        bool,
        typer.Option("--no-truth", help="Store no hidden ground truth (real unlabelled data)."),
    ] = False,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Class names a,b,c (label order); needed for unlabelled "
            "sources unless --num-classes.",
        ),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", help="Class names 0..K-1.")
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(
            "--channels",
            help="Force 1 (grayscale) or 3 (RGB) channels, converting every image (folder only).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per write.")] = 1024,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding threads (folder only).")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Create a pool file: every image once, its hidden ground truth, an initial labelled set.

    Sources: folder DIR/<class>/*.png|jpg|jpeg|bmp|webp (test split from DIR/test/<class> or
    --test-dir), or DIR/train/<class> + DIR/test/<class>, or a flat DIR of unlabelled images
    (give --classes or --num-classes); npz: keras-style x_train, y_train[, x_test, y_test];
    digits: scikit-learn's bundled 8x8 digits with a seeded, stratified 20% test split.
    """
    from dgaal_core import ingest

    from .progress import StageProgress, console

    t0 = time.perf_counter()
    names = ingest.class_names_from(classes, num_classes)
    if out.exists() and not force:  # fail before listing a million files
        raise PoolExistsError(f"{out} already exists; pass --force to replace it")
    with console.status(f"reading {source or from_.value}...", spinner="dots"):
        src = ingest.open_source(
            from_.value,
            source,
            test_dir=test_dir,
            class_names=names,
            channels=channels,
            seed=seed,
            workers=workers,
        )
    with StageProgress() as report:
        result = ingest.create_pool(
            out,
            src,
            initial=initial,
            stratified=stratified,
            seed=seed,
            keep_truth=not no_truth,
            force=force,
            batch_size=batch_size,
            progress=report,
        )
    h, w, c = result.image_shape
    typer.echo(
        f"created {result.path}: {result.images} images ({result.labelled} labelled), "
        f"{result.test} test, {h}x{w}x{c}, {len(result.class_names)} classes "
        f"in {time.perf_counter() - t0:.1f} s"
    )


@app.command()
@handle_errors
def info(pool: PoolArg, as_json: JsonOpt = False) -> None:
    """Show counts by state, origin and class, the image shape, the rounds so far, the size."""
    import numpy as np

    from dgaal_core.loop.state import pending_round, round_records
    from dgaal_core.pool.embeddings import read_manifest
    from dgaal_core.pool.reader import PoolReader
    from dgaal_core.pool.schema import State

    with PoolReader(pool) as r:
        r.check_shards()  # a missing or short shard: the pool is damaged, say so
        summary = r.summary()
        pending = pending_round(r)
        summary["unfinished"] = (  # the pending round, read through its typed record
            None
            if pending is None
            else {
                "round": pending.round,
                "after": pending.phase.value,
                "waiting": [int(i) for i in np.flatnonzero(r.states == State.QUERIED)],
            }
        )
        manifest = read_manifest(pool)
        summary["embeddings"] = (
            None
            if manifest is None
            else {
                "dim": manifest.dim,
                "encoder": manifest.encoder.get("name"),
                "pool_rows": manifest.rows("pool"),
                "test_rows": manifest.rows("test"),
            }
        )
        if as_json:
            typer.echo(json.dumps(summary))
            return
        records = round_records(r)
    _print_info(summary, records)


DAMAGE_EXIT_CODE = 1  # damage found; 2 stays "could not check at all" (handle_errors)


@app.command()
@handle_errors
def check(
    pool: PoolArg,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove this pool's orphan shards and abandon a broken round that waits for "
            "answers; committed labels are never touched.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the index against the shards, the rows' states, labels and lineage, and the round
    log. Exit 0: pool OK; 1: damage found (the table says where); 2: not a pool at all."""
    from dgaal_core.pool.check import check_pool, repair_pool

    findings = check_pool(pool)
    done: list[str] = []
    left: list[str] = []
    if repair and any(fd.damaged for fd in findings):
        done, left = repair_pool(pool, findings)
        findings = check_pool(pool)
    damaged = [fd for fd in findings if fd.damaged]
    if not repair:  # say what --repair would do, and what it could not
        done = [f"--repair would {fd.repair}" for fd in damaged if fd.repairable]
        left = [f"{fd.check}: {fd.repair}" for fd in damaged if fd.repair and not fd.repairable]
    if as_json:
        out = {
            "path": str(pool),
            "ok": not damaged,
            "checks": [fd.to_dict() for fd in findings],
            "repaired": done if repair else [],
            "not_repaired": left,
        }
        typer.echo(json.dumps(out))
    else:
        _print_check(findings, done, left)
        typer.echo("pool OK" if not damaged else f"pool DAMAGED: {len(damaged)} checks failed")
    if damaged:
        raise typer.Exit(DAMAGE_EXIT_CODE)


def _print_check(findings: list[Any], done: list[str], left: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    table = Table(title_justify="left")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "damaged": "bold red", "skipped": "yellow"}
    for fd in findings:
        table.add_row(fd.check, f"[{colour[fd.status]}]{fd.status}[/]", fd.detail)
    con.print(table)
    for line in done:
        prefix = "" if line.startswith("--repair") else "repaired: "
        con.print(f"{prefix}{line}", markup=False, highlight=False)
    for line in left:
        con.print(f"cannot repair: {line}", markup=False, highlight=False)


ROUND_COLUMNS = (
    "round",
    "strategy",
    "oracle_queries",
    "free_labels",
    "generated_added",
    "accuracy",
)
MAX_CLASS_ROWS = 50


def _fmt(v: Any, key: str = "") -> str:
    if key == "accuracy" and isinstance(v, float):
        return f"{100 * v:.2f}%"  # as the round's summary shows it
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _round_values(r: Any) -> dict[str, Any]:
    """The ROUND_COLUMNS of a RoundRecord (None where the record has no such field)."""
    return {"round": r.round, "strategy": r.strategy, "oracle_queries": r.oracle_queries,
            "free_labels": r.free_labels, "generated_added": r.generated_added,
            "accuracy": r.accuracy}  # fmt: skip


def _pending_line(p: dict[str, Any], path: str) -> str:
    """``round 2 is unfinished ...``: what the pool's pending round waits for."""
    from dgaal_core.values import plural

    waiting = p["waiting"]
    if waiting:
        ids = ", ".join(map(str, waiting[:10])) + (", ..." if len(waiting) > 10 else "")
        return (
            f"round {p['round']} is waiting for {plural(len(waiting), 'answer')} (id "
            f"{ids}): `dgaal label --pool {path} ANSWERS`"
        )
    return (
        f"round {p['round']} is unfinished (after phase '{p['after']}'): the next "
        "`dgaal round` finishes it"
    )


def _print_info(s: dict[str, Any], records: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    h, w, c = s["image_shape"]
    con.print(
        f"[bold]{s['path']}[/]  {human_bytes(s['file_bytes'])}, generation {s['generation']}\n"
        f"images {h}x{w}x{c}, {s['num_classes']} classes, hidden ground truth: "
        f"{'yes' if s['has_truth'] else 'no'}"
    )
    counts = Table(title="rows", title_justify="left")
    counts.add_column("")
    counts.add_column("count", justify="right")
    for key in (
        "images",
        "unlabelled",
        "labelled",
        "queried",
        "excluded",
        "real",
        "generated",
        "test",
    ):
        if key in s:
            counts.add_row(key, str(s[key]))
    con.print(counts)
    if (e := s.get("embeddings")) is not None:
        lag = s["images"] - e["pool_rows"]
        con.print(
            f"embeddings: {e['dim']}-d from {e['encoder']}, {e['pool_rows']} pool and "
            f"{e['test_rows']} test rows" + (f" ({lag} newer rows not yet)" if lag else "")
        )
    if s["num_classes"] <= MAX_CLASS_ROWS:
        per = Table(title="per class", title_justify="left")
        per.add_column("class")
        per.add_column("labelled", justify="right")
        per.add_column("test", justify="right")
        for name, v in s["per_class"].items():
            per.add_row(name, str(v["labelled"]), str(v["test"]))
        con.print(per)
    else:
        con.print(f"({s['num_classes']} classes: see --json for per-class counts)")
    if (p := s.get("unfinished")) is not None:
        con.print(_pending_line(p, s["path"]), markup=False, highlight=False)
    if not records:
        con.print("rounds: none yet")
        return
    rows = [_round_values(r) for r in records]
    cols = [k for k in ROUND_COLUMNS if any(row[k] is not None for row in rows)]
    table = Table(title="rounds", title_justify="left")
    for k in cols:
        table.add_column(k, justify="left" if k == "strategy" else "right")
    for row in rows:
        table.add_row(*("" if row[k] is None else _fmt(row[k], k) for k in cols))
    con.print(table)


def _register_embed() -> None:
    from .pool_embed import embed  # its own module: this one stays small

    app.command()(handle_errors_deferred(embed))


_register_embed()
