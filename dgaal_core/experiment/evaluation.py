"""The experiment's own uses of T (torch): round 0 (T trained on a run's initial labelled set)
and the label fidelity of x_g, judged by a reference T trained on all the source's ground truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dgaal_core.atomic import replacing
from dgaal_core.experiment.results import ResultRow
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.sources import task_outputs
from dgaal_core.loop.task_models import fit_task
from dgaal_core.model.data import ArraySource
from dgaal_core.model.networks import ConvClassifier, build_task_model
from dgaal_core.model.task import train_task
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.progress import Progress
from dgaal_core.values import derive_seed


def initial_row(
    path: Path, config: RoundConfig, seed: int, real: int, progress: Progress | None = None
) -> ResultRow:
    """Round 0: T trained on the initial labelled set of the run pool at ``path``, as a round
    trains it, evaluated on the test split."""
    t0 = time.perf_counter()
    with PoolReader(path) as r:
        run = config.run_config(r.image_shape, r.num_classes)
        ids = r.ids(State.LABELLED)
        task = fit_task(r, config.task_model, run, seed, 0, progress=progress)
        metrics = task.evaluate(r)
    return ResultRow(
        round=0,
        labelled=int(ids.size),
        labelled_real=int(ids.size),
        labelled_ratio=ids.size / real,
        accuracy=metrics.accuracy,
        test_loss=metrics.mean_loss,
        per_class_accuracy=tuple(metrics.to_dict()["per_class_accuracy"]),
        seconds=round(time.perf_counter() - t0, 3),
    )


def reference_task(
    source: Path,
    config: RoundConfig,
    cache: Path,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> ConvClassifier:
    """T trained on the ground truth of all the real training images of ``source`` (cached in
    ``cache``): the judge of generated images' inherited labels."""
    with PoolReader(source) as r:
        run = config.run_config(r.image_shape, r.num_classes)
        task = build_task_model(run.model, derive_seed(0, "reference-task"))
        if cache.exists():
            task.load_state_dict(torch.load(cache, weights_only=True))
            return task
        ids = r.ids(origin=Origin.REAL)
        ids = ids[r.states[ids] != State.EXCLUDED]
        data = ArraySource(r.read_images(ids), r.read_truth(ids).astype(np.int64))
    rng = np.random.default_rng(derive_seed(0, "reference-task", "batches"))
    log(f"training the reference T on {ids.size} images (label fidelity)")
    train_task(task, data, run.train, rng, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with replacing(cache) as tmp:
        torch.save(task.state_dict(), tmp)
    return task


def label_fidelity(task: ConvClassifier, pool: Path, span: tuple[int, int]) -> float:
    """Share of the rows ``[span)`` (a round's x_g) whose class ``task`` agrees with their
    inherited label."""
    ids = np.arange(span[0], span[1], dtype=np.int64)
    with PoolReader(pool) as r:
        probs, _ = task_outputs(task, r, ids, device="cpu")
        return float(np.mean(probs.argmax(1) == r.labels[ids]))
