"""Joining (or starting) Ray and sizing the onnxruntime actor pool for :mod:`export.distributed`
(no torch)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from dgaal_core.errors import DgaalError

RAY_RANGE = ">=2.40,<3"


class RayEngineError(DgaalError):
    """Ray is missing, unreachable, or a worker could not do its part."""


def require_ray() -> Any:
    """``import ray``, or one line saying how to install it."""
    try:
        import ray
        import ray.data
    except ModuleNotFoundError:
        raise RayEngineError(
            f"--engine ray needs Ray Data (ray[data]{RAY_RANGE}): pip install 'dgaal[ray]'"
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    ``address``: None starts (or reuses) a Ray in this process; "auto" joins the cluster this
    node belongs to (``ray start``); "ray://HOST:10001" a remote one through Ray Client.
    ``workers``: onnxruntime actors (None: as many as leave one CPU, or one per GPU, free for the
    read tasks). ``cpus_per_worker``: CPUs each actor holds (its intra-op threads).
    ``gpus``: "auto" gives each actor a GPU when the cluster has them and ``provider`` allows.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    provider: str = "auto"
    gpus: str = "auto"
    batch_size: int = 256
    rows_per_task: int = 4096
    num_cpus: int | None = None  # only for a local Ray started here (None: all cores)
    stall_timeout_s: float = 600.0  # fail, not hang, when the pipeline stops moving
    # Ray's own Python log lines (its token-authentication warning, "Started a local Ray
    # instance"): hidden unless asked for, as DGAAL_RAY_LOGS=1 in the environment does
    ray_logs: bool = field(default_factory=lambda: os.environ.get("DGAAL_RAY_LOGS", "") == "1")

    def check(self) -> None:
        """One line per bad setting."""
        if self.workers is not None and self.workers < 1:
            raise RayEngineError(f"--workers: expected an integer >= 1, got {self.workers}")
        if self.cpus_per_worker < 1:
            raise RayEngineError(f"cpus_per_worker: expected >= 1, got {self.cpus_per_worker}")
        if self.batch_size < 1 or self.rows_per_task < 1:
            raise RayEngineError("batch_size and rows_per_task must be >= 1")
        if self.stall_timeout_s <= 0:
            raise RayEngineError(f"stall_timeout_s: expected > 0, got {self.stall_timeout_s}")
        if self.gpus not in ("auto", "none"):
            raise RayEngineError(f"gpus: expected auto or none, got {self.gpus!r}")


def connect(options: RayOptions) -> Any:
    """Join (or start) Ray as ``options.address`` says; returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        quiet()
        return ray
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if not options.ray_logs:  # dgaal says what it does; a healthy run shows no Ray warnings
        kwargs |= {"configure_logging": True, "logging_level": logging.ERROR}
    if options.address is None:  # "local": a new Ray here, never a cluster found by chance
        kwargs |= {"address": "local", "num_cpus": options.num_cpus, "include_dashboard": False}
    else:
        kwargs["address"] = options.address
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise RayEngineError(f"--address {options.address}: no Ray cluster there ({e})") from None
    quiet()
    return ray


def quiet() -> None:
    """dgaal shows its own progress: no Ray Data bars or per-dataset INFO lines."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "Progress bars disabled"


def actor_sizing(ray: Any, options: RayOptions) -> tuple[int, int, str]:
    """(actors, GPUs per actor, provider) that leave the read tasks room to run."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    use_gpu = gpus > 0 and options.gpus == "auto" and options.provider in ("auto", "cuda")
    if options.provider == "cuda" and not use_gpu:
        raise RayEngineError("provider cuda asked for, but the Ray cluster has no GPUs")
    spare = cpus - 1  # one CPU for the read tasks, always
    if use_gpu:
        most = min(gpus, spare // options.cpus_per_worker)
    else:
        most = spare // options.cpus_per_worker
    if most < 1:
        raise RayEngineError(
            f"the Ray cluster has {cpus} CPU(s): an actor of {options.cpus_per_worker} CPU(s) "
            "plus one CPU for reading the pool do not fit"
        )
    workers = most if options.workers is None else options.workers
    if workers > most:
        raise RayEngineError(
            f"--workers {workers}: the Ray cluster has {cpus} CPUs and {gpus} GPUs; at most "
            f"{most} actor(s) of {options.cpus_per_worker} CPU(s) leave a CPU for the read tasks"
        )
    return workers, (1 if use_gpu else 0), ("cuda" if use_gpu else "cpu")
