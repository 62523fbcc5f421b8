"""Pools beyond one machine: scoring and generation as Ray Data batch inference (no torch).

    >>> opts = RayOptions(address="auto", workers=4)          # or None: a local Ray
    >>> res = score_pool_ray("round-0003/sampler.onnx", "pools.h5", options=opts)
    >>> chosen = select_lowest(res.ids, res.scores, 500)      # the same as the local runtime's
    >>> x_g = generate_pool_ray("round-0003/generator.onnx", "pools.h5", chosen, noise, opts)

The pipeline: :class:`PoolDatasource` turns the rows to score into read tasks, each a contiguous
run of ids inside one image shard; a task opens that shard with h5py inside the Ray worker (no
handle ever crosses processes) and emits ``{"id", "image"}`` blocks. ``map_batches`` feeds them
to a pool of actors, each holding one onnxruntime session (the CUDA provider and one GPU per actor
when the cluster has GPUs); the driver gathers ``(id, score)`` pairs and puts them back in id
order, so the result and the lowest-N are exactly the local runtime's (an int8 cascade file is
rescored in fp32 over the whole pool's lowest fraction, as locally).

Every node must reach the pool's files at the same path (a shared filesystem); a worker that
cannot open a shard fails the run with one error naming its node and the shard. Ray retries
tasks whose worker died. Actors are sized so that read tasks always keep a CPU: with every CPU
held by an actor, Ray Data's reads never run and the pipeline hangs.
"""

from __future__ import annotations

import functools
import math
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.pool.reader import PoolReader, contiguous_runs
from dgaal_core.pool.schema import IMAGES, State

from .runtime import (
    Generator,
    PoolScores,
    Progress,
    Sampler,
    merge_rescored,
    parse_state,
    select_lowest,
)

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
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _sizing(ray: Any, options: RayOptions) -> tuple[int, int, str]:
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


# ---- reading the pool --------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadSpec:
    shard: str  # absolute path of the shard file
    start: int  # the shard's first pool row
    ids: np.ndarray  # ascending pool ids inside this shard


def _open_shard(pool: str, shard: str, image_shape: tuple[int, ...], last: int) -> Any:
    """The open h5py file of ``shard``, checked to hold rows ``0..last`` of ``image_shape``;
    else :class:`RayEngineError` naming this node, the shard and the pool."""
    import h5py

    where = f"node {socket.gethostname()}"
    try:
        f = h5py.File(shard, "r", locking=False)
    except OSError as e:
        raise RayEngineError(
            f"{where} cannot open shard {shard} of pool {pool} ({e}); every node must "
            "reach the pool's files at the same path"
        ) from None
    ds = f.get(IMAGES)
    if ds is None or tuple(ds.shape[1:]) != image_shape or last >= ds.shape[0]:
        shape = None if ds is None else ds.shape
        f.close()
        raise RayEngineError(
            f"{where}: shard {shard} of pool {pool} holds {shape}, which does not match the "
            "pool's index (run `dgaal pool check`)"
        )
    return f


def _read_spec(pool: str, spec: _ReadSpec, image_shape: tuple[int, ...]) -> list[Any]:
    """Runs inside a Ray worker: read ``spec.ids`` from one shard, return one block."""
    from ray.data.block import BlockAccessor

    local = spec.ids - spec.start
    with _open_shard(pool, spec.shard, image_shape, int(local[-1]) if local.size else -1) as f:
        ds = f[IMAGES]
        images = np.empty((local.size, *image_shape), np.uint8)
        for a, b in contiguous_runs(local):
            lo, hi = int(local[a]), int(local[b - 1]) + 1
            images[a:b] = ds[lo:hi][local[a:b] - lo]
    return [BlockAccessor.batch_to_block({"id": spec.ids, "image": images})]


def _datasource_class() -> type:
    """:class:`PoolDatasource`, defined when Ray is importable (it subclasses Ray's)."""
    ray = require_ray()
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    class PoolDatasource(ray.data.Datasource):  # type: ignore[name-defined]
        """Read tasks over contiguous id runs of one shard each (ascending ids)."""

        def __init__(self, pool: str | Path, ids: np.ndarray, rows_per_task: int) -> None:
            super().__init__()
            self.pool = str(Path(pool).resolve())
            with PoolReader(self.pool) as r:
                self.image_shape = tuple(int(v) for v in r.image_shape)
                shards = r.shard_files()
            self.specs: list[_ReadSpec] = []
            for path, start, rows in shards:
                lo, hi = np.searchsorted(ids, [start, start + rows])
                inside = ids[lo:hi]
                if inside.size:  # check on the driver first: a failed Ray run is slow to undo
                    _open_shard(self.pool, str(path), self.image_shape, rows - 1).close()
                for i in range(0, inside.size, rows_per_task):
                    self.specs.append(_ReadSpec(str(path), start, inside[i : i + rows_per_task]))
            self.image_bytes = int(np.prod(self.image_shape))

        def estimate_inmemory_data_size(self) -> int:
            return sum(s.ids.size for s in self.specs) * (self.image_bytes + 8)

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
        ) -> list[Any]:
            tasks = []
            for spec in self.specs:
                meta = BlockMetadata(
                    num_rows=int(spec.ids.size),
                    size_bytes=int(spec.ids.size * (self.image_bytes + 8)),
                    input_files=(spec.shard,),
                    exec_stats=None,
                )
                tasks.append(
                    ReadTask(functools.partial(_read_spec, self.pool, spec, self.image_shape), meta)
                )
            return tasks

    return PoolDatasource


def pool_dataset(pool: str | Path, ids: np.ndarray, rows_per_task: int = 4096) -> Any:
    """A Ray Dataset of ``{"id": int64, "image": uint8 [H, W, C]}`` over pool rows ``ids``."""
    ray = require_ray()
    source = _datasource_class()(pool, np.asarray(ids, dtype=np.int64), rows_per_task)
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.specs)))


# ---- the actors ---------------------------------------------------------------------------------


class _ScoreActor:
    """One onnxruntime session per actor: ``{"id", "image"}`` -> ``{"id", "score"}``."""

    def __init__(self, model: str, provider: str, threads: int) -> None:
        self.sampler = Sampler(model, provider=provider, threads=threads, rescore=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores, _ = self.sampler.score(np.ascontiguousarray(batch["image"]))
        return {"id": batch["id"], "score": scores}


class _GenerateActor:
    """``{"id", "image"}`` -> ``{"id", "image": G(image)}`` with fixed noise-head scales."""

    def __init__(self, model: str, provider: str, threads: int, noise: np.ndarray) -> None:
        self.generator = Generator(model, provider=provider, threads=threads)
        self.noise = noise

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.generator.generate(np.ascontiguousarray(batch["image"]), self.noise)
        return {"id": batch["id"], "image": out}


def _run(
    dataset: Any,
    actor: type,
    constructor: dict[str, Any],
    options: RayOptions,
    columns: Sequence[str],
    progress: Progress | None,
    total: int,
) -> Iterator[dict[str, np.ndarray]]:
    ray = connect(options)
    workers, gpus, provider = _sizing(ray, options)
    mapped = dataset.map_batches(
        actor,
        fn_constructor_kwargs={**constructor, "provider": provider,
                               "threads": options.cpus_per_worker},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=options.cpus_per_worker,
        num_gpus=gpus,
    )  # fmt: skip
    mapped.context.execution_no_progress_timeout_s = options.stall_timeout_s
    done = 0
    if progress is not None:
        progress(0, total)
    batches = mapped.iter_batches(batch_size=None, batch_format="numpy")
    failure: Exception | None = None
    try:
        for batch in batches:
            part = {c: batch[c] for c in columns}
            done += int(part["id"].size)
            if progress is not None:
                progress(done, total)
            yield part
    except Exception as e:  # Ray wraps worker errors; keep our one line where there is one
        failure = _one_line(e)
        if failure is e:
            raise
    if failure is not None:  # raised here, not in the except block: no chained Ray traceback
        raise failure


def _one_line(e: Exception) -> Exception:
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, DgaalError):
            return RayEngineError(str(cause))
        if type(cause).__name__ == "ExecutionTimeoutError":
            return RayEngineError(
                "the Ray pipeline made no progress for too long (stall_timeout_s); are the "
                "cluster's CPUs or GPUs held by other work?"
            )
        cause = cause.__cause__ or getattr(cause, "cause", None)
    text = str(e)
    for line in text.splitlines():
        if "RayEngineError: " in line:
            return RayEngineError(line.split("RayEngineError: ", 1)[1])
    return e


def _gather_scores(
    model: str, pool: str, chosen: np.ndarray, options: RayOptions, progress: Progress | None
) -> np.ndarray:
    """Scores of ascending ``chosen`` through Ray, in that order (each id exactly once)."""
    if chosen.size == 0:
        return np.zeros(0, np.float32)
    ds = pool_dataset(pool, chosen, options.rows_per_task)
    parts = list(_run(ds, _ScoreActor, {"model": model}, options, ("id", "score"), progress,
                      int(chosen.size)))  # fmt: skip
    ids = np.concatenate([p["id"] for p in parts]).astype(np.int64)
    scores = np.concatenate([p["score"] for p in parts]).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], chosen):
        raise RayEngineError(f"Ray returned {ids.size} scores for {chosen.size} rows")
    return scores[order]


def score_pool_ray(
    model: str | Path,
    pool: str | Path,
    ids: np.ndarray | Sequence[int] | None = None,
    *,
    state: State | str | None = State.UNLABELLED,
    options: RayOptions | None = None,
    progress: Progress | None = None,
) -> PoolScores:
    """Like :meth:`export.runtime.Sampler.score_pool`, on a Ray cluster: ascending ids with
    their scores (identical to the local runtime's; no latents)."""
    options = options or RayOptions()
    options.check()
    start = time.perf_counter()
    sampler = Sampler(model, provider="cpu", threads=1)  # checks the file, reads its metadata
    with PoolReader(pool) as reader:
        chosen = sampler._pick(reader, ids, parse_state(state))
    path = str(Path(pool).resolve())
    scores = _gather_scores(str(Path(model).resolve()), path, chosen, options, progress)
    if sampler.exact is not None and chosen.size:  # int8 cascade: fp32 over the lowest fraction
        low = np.sort(
            select_lowest(chosen, scores, math.ceil(sampler.rescore_fraction * chosen.size))
        )
        exact = _gather_scores(str(sampler.exact.path.resolve()), path, low, options, None)
        scores = merge_rescored(chosen, scores, low, exact)
    return PoolScores(chosen, scores, None, time.perf_counter() - start)


def generate_pool_ray(
    model: str | Path,
    pool: str | Path,
    ids: np.ndarray | Sequence[int],
    noise_scales: np.ndarray,
    options: RayOptions | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """G(x) for pool rows ``ids`` on a Ray cluster, in the order given (like
    :meth:`export.runtime.Generator.generate_pool`)."""
    options = options or RayOptions()
    options.check()
    gen = Generator(model, provider="cpu", threads=1)
    ids = np.asarray(ids, dtype=np.int64)
    with PoolReader(pool) as reader:
        gen.info.check_pool_shape(gen.path, reader.path, reader.image_shape)
        if ids.size and (ids.min() < 0 or ids.max() >= reader.num_rows):
            raise DgaalError(
                f"{reader.path}: ids must lie in [0, {reader.num_rows}), "
                f"got {ids.min()}..{ids.max()}"
            )
    noise = np.asarray(noise_scales, dtype=np.float32)
    if noise.shape != (gen.noise_channels,):
        raise DgaalError(
            f"noise_scales: expected float32 [{gen.noise_channels}], got {list(noise.shape)}"
        )
    unique = np.unique(ids)
    out = np.empty((unique.size, *gen.info.image_shape), np.uint8)
    if unique.size:
        ds = pool_dataset(str(Path(pool).resolve()), unique, options.rows_per_task)
        constructor = {"model": str(gen.path.resolve()), "noise": noise}
        got = 0
        for part in _run(ds, _GenerateActor, constructor, options, ("id", "image"), progress,
                         int(unique.size)):  # fmt: skip
            out[np.searchsorted(unique, part["id"])] = part["image"]
            got += int(part["id"].size)
        if got != unique.size:
            raise RayEngineError(f"Ray returned {got} images for {unique.size} rows")
    return out[np.searchsorted(unique, ids)]


def generate_images_ray(
    model: str | Path,
    images: np.ndarray,
    noise_scales: np.ndarray,
    options: RayOptions | None = None,
) -> np.ndarray:
    """G(images) for in-memory uint8 images on a Ray cluster, in the order given (what a round
    does with the images it selected)."""
    options = options or RayOptions()
    options.check()
    gen = Generator(model, provider="cpu", threads=1)
    gen.info.check_images(images)
    ray = connect(options)
    from ray.data.block import BlockAccessor

    n, step = images.shape[0], options.rows_per_task
    if n == 0:
        return images.copy()
    blocks = [
        BlockAccessor.batch_to_block(
            {"id": np.arange(i, min(n, i + step)), "image": images[i : i + step]}
        )
        for i in range(0, n, step)
    ]
    ds = ray.data.from_arrow(blocks)
    out = np.empty_like(images)
    constructor = {"model": str(gen.path.resolve()), "noise": np.asarray(noise_scales, np.float32)}
    got = 0
    for part in _run(ds, _GenerateActor, constructor, options, ("id", "image"), None, n):
        out[part["id"]] = part["image"]
        got += int(part["id"].size)
    if got != n:
        raise RayEngineError(f"Ray returned {got} images for {n}")
    return out
