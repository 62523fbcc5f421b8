"""Pools beyond one machine: scoring, generation and embedding as Ray Data batch inference
(no torch).

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

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State

from .ray_cluster import (
    RAY_RANGE,
    RayEngineError,
    RayOptions,
    actor_sizing,
    connect,
    quiet,
    require_ray,
)
from .ray_pool import pool_dataset
from .runtime import (
    GeneratorSession,
    PoolScores,
    Progress,
    SamplerSession,
    merge_rescored,
    parse_state,
    select_lowest,
)

__all__ = [
    "RAY_RANGE", "RayEngineError", "RayOptions", "connect", "embed_rows_ray", "generate_images_ray",
    "generate_pool_ray", "pool_dataset", "quiet", "require_ray", "score_pool_ray",
]  # fmt: skip


# ---- the actors ---------------------------------------------------------------------------------


class _ScoreActor:
    """One onnxruntime session per actor: ``{"id", "image"}`` -> ``{"id", "score"}``."""

    def __init__(self, model: str, provider: str, threads: int) -> None:
        self.sampler = SamplerSession(model, provider=provider, threads=threads, rescore=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores, _ = self.sampler.score(np.ascontiguousarray(batch["image"]))
        return {"id": batch["id"], "score": scores}


class _GenerateActor:
    """``{"id", "image"}`` -> ``{"id", "image": G(image)}`` with fixed noise-head scales."""

    def __init__(self, model: str, provider: str, threads: int, noise: np.ndarray) -> None:
        self.generator = GeneratorSession(model, provider=provider, threads=threads)
        self.noise = noise

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.generator.generate(np.ascontiguousarray(batch["image"]), self.noise)
        return {"id": batch["id"], "image": out}


class _EmbedActor:
    """``{"id", "image"}`` -> ``{"id", "embedding"}`` with one encoder session per actor."""

    def __init__(self, model: str, provider: str, threads: int, spec: dict[str, Any]) -> None:
        from .encoder import EncoderSession, InputSpec

        self.encoder = EncoderSession(
            model, provider=provider, threads=threads, spec=InputSpec.from_dict(spec)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "embedding": self.encoder.embed(batch["image"])}


def embed_rows_ray(
    model: str | Path,
    pool: str | Path,
    ids: np.ndarray,
    spec: dict[str, Any],
    options: RayOptions | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The encoder's embeddings [len(ids), D] of ascending pool rows ``ids`` on a Ray cluster,
    in that order (the same as the local runtime's: the same session code runs per actor)."""
    options = options or RayOptions()
    options.check()
    ids = np.asarray(ids, dtype=np.int64)
    connect(options)  # before Ray Data would start a default Ray on its own
    ds = pool_dataset(str(Path(pool).resolve()), ids, options.rows_per_task)
    constructor = {"model": str(Path(model).resolve()), "spec": spec}
    got_ids, parts = [], []
    for part in _run(ds, _EmbedActor, constructor, options, ("id", "embedding"), progress,
                     int(ids.size)):  # fmt: skip
        got_ids.append(part["id"])
        parts.append(part["embedding"])
    if not parts:
        return np.zeros((0, 0), np.float32)
    got, out = np.concatenate(got_ids).astype(np.int64), np.concatenate(parts)
    order = np.argsort(got, kind="stable")
    if not np.array_equal(got[order], ids):
        raise RayEngineError(f"Ray returned {got.size} embeddings for {ids.size} rows")
    return out[order]


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
    workers, gpus, provider = actor_sizing(ray, options)
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
    connect(options)  # before Ray Data would start a default Ray on its own
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
    sampler = SamplerSession(
        model, provider="cpu", threads=1
    )  # checks the file, reads its metadata
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
    gen = GeneratorSession(model, provider="cpu", threads=1)
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
        connect(options)  # before Ray Data would start a default Ray on its own
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
    gen = GeneratorSession(model, provider="cpu", threads=1)
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
