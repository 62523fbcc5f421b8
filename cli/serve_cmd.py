"""``dgaal serve label-studio``: Label Studio as a live loop (:mod:`cli.label_studio_live`)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from dgaal_core.errors import DgaalError

from .common import (
    CoevolveStepsOpt,
    D1InputOpt,
    DeviceOpt,
    GanStepsOpt,
    PoolOpt,
    PresetOpt,
    ProviderOpt,
    SeedOpt,
    TaskEpochsOpt,
    TaskMinStepsOpt,
    TaskModelOpt,
    WorkdirOpt,
    handle_errors_deferred,
    set_torch_threads,
)

app = typer.Typer(
    help="Serve dgaal to a labelling tool.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("label-studio")
@handle_errors_deferred
def label_studio(
    pool: PoolOpt,
    url: Annotated[
        str, typer.Option("--url", help="Label Studio's URL, as this machine reaches it.")
    ] = "http://localhost:8080",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="A Label Studio access token (Account & Settings); default: "
            "$LABEL_STUDIO_API_KEY.",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        int | None,
        typer.Option(help="Project id; default: the project 'dgaal: POOL', created if missing."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address this backend listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port this backend listens on.")] = 9090,
    backend_url: Annotated[
        str | None,
        typer.Option(
            "--backend-url",
            help="This backend's URL as Label Studio reaches it (default: http://HOST:PORT).",
            show_default=False,
        ),
    ] = None,
    strategy: Annotated[str, typer.Option(help="Each round's strategy (see dgaal round).")] = (
        "dgaal"
    ),
    budget: Annotated[
        str, typer.Option(help="Images each round asks for: a fraction or a count.")
    ] = "0.05",
    preset: PresetOpt = "small",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    provider: ProviderOpt = "auto",
    gan_steps: GanStepsOpt = None,
    task_epochs: TaskEpochsOpt = None,
    task_min_steps: TaskMinStepsOpt = None,
    coevolve_steps: CoevolveStepsOpt = None,
    task_model: TaskModelOpt = "cnn",
    d1_input: D1InputOpt = "auto",
    workdir: WorkdirOpt = None,
) -> None:
    """Run rounds as Label Studio annotations arrive: an ML backend (/health, /setup,
    /predict) and a webhook for one project.

    Each round's tasks go into the project with T's class pre-selected; annotations are
    imported as they arrive (as `dgaal label` imports an export), and when a round's queries
    are all answered the next round runs and its tasks are imported. Ctrl-C stops it; a round
    it was running is finished by the next start (or by `dgaal round`).
    """
    from dgaal_core.loop.config import RoundConfig
    from dgaal_core.values import parse_size

    key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    if not key:
        raise DgaalError("--api-key: give a Label Studio access token (or $LABEL_STUDIO_API_KEY)")
    if not 0 < port < 65536:
        raise DgaalError(f"--port {port}: expected 1..65535")
    try:
        cfg = RoundConfig(
            strategy=strategy, budget=parse_size(budget, "--budget"), oracle="human",
            preset=preset, seed=seed, device=device, gan_steps=gan_steps, task_epochs=task_epochs,
            task_min_steps=task_min_steps, coevolve_steps=coevolve_steps, task_model=task_model,
            d1_input=d1_input,
        )  # fmt: skip
    except ValueError as e:
        raise DgaalError(str(e)) from None
    if not Path(pool).is_file():
        raise DgaalError(f"--pool {pool}: no such pool file")
    import uvicorn

    from export.embed import round_embedder
    from export.round_backend import onnx_exporter

    from . import interrupt
    from .label_studio_live import LiveLoop, LiveSettings, app
    from .progress import progress_line

    set_torch_threads(preset)
    settings = LiveSettings(
        pool=Path(pool), label_studio=url.rstrip("/"), api_key=key, project=project,
        backend_url=backend_url or f"http://{host}:{port}", workdir=workdir,
    )  # fmt: skip
    loop = LiveLoop(
        settings, cfg, onnx_exporter(provider=provider), progress_line,
        embedder=round_embedder(provider),
    )  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(app(loop), host=host, port=port, log_level="warning", lifespan="off")
    )
    web = threading.Thread(target=server.run, name="dgaal-http", daemon=True)
    web.start()  # up before Label Studio checks it (connect registers the backend)
    while not server.started:
        if not web.is_alive():
            raise DgaalError(f"--host {host} --port {port}: cannot listen there")
        interrupt.check("starting")
        time.sleep(0.05)
    worker = threading.Thread(target=loop.work, name="dgaal-rounds", daemon=True)
    try:
        loop.connect()
        progress_line(
            f"serving {pool} to Label Studio project {loop.project} at {settings.label_studio} "
            f"as {settings.backend_url}; Ctrl-C stops"
        )
        worker.start()
        while worker.is_alive():
            interrupt.check("serving")
            worker.join(timeout=0.2)
    finally:  # the round in progress stops at its next safe point, crash-safe
        loop.stop.set()
        loop.wake.put("stop")  # a worker waiting for events wakes now, not at its next poll
        server.should_exit = True
        if worker.is_alive():
            progress_line("stopping: a round in progress stops at its next step (Ctrl-C again "
                          "stops at once; the pool stays finishable either way)")  # fmt: skip
        while worker.is_alive():  # a second signal raises here and ends the process now
            worker.join(timeout=0.2)
            interrupt.check("stopping")
        web.join(timeout=10)
    if loop.failure is not None:  # not Label Studio's fault nor the answers': a bug, shown whole
        raise loop.failure


def register(main: typer.Typer) -> None:
    """Add ``serve`` to the top-level app."""
    main.add_typer(app, name="serve")
