"""The task model T as the round uses it, whichever kind it is (``RoundConfig.task_model``):

- ``cnn``: today's end-to-end T (the preset's CNN, or the paper preset's VGG16) on the pixels;
- ``linear``: a linear head on the pool's frozen embeddings (:mod:`dgaal_core.model.head`),
  which needs ``dgaal pool embed`` first;
- ``linear-ssl``: the same head, semi-supervised: the candidates join its fit with pseudo-labels
  propagated on a kNN graph of the embeddings (:mod:`dgaal_core.model.propagation`).

Both answer the same three questions: class probabilities and features of pool rows (for the
strategies and the human oracle's suggestions), and accuracy on the test split. Every strategy
in one comparison gets the same T, because T is a setting of the round, not of the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dgaal_core.errors import ConfigError, PoolFormatError
from dgaal_core.loop.sources import PoolSource, task_outputs
from dgaal_core.loop.strategies import Need
from dgaal_core.loop.strategies import strategy as get_strategy
from dgaal_core.model.config import RunConfig
from dgaal_core.model.head import LinearHead, fit_linear_head
from dgaal_core.model.networks import ConvClassifier
from dgaal_core.model.task import TaskMetrics
from dgaal_core.pool.embeddings import Embeddings, open_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.progress import Progress
from dgaal_core.values import derive_seed


class TaskModel(Protocol):
    """T, trained: what the round asks of it."""

    def outputs(self, reader: PoolReader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities [N, K] and features [N, F] of pool rows ``ids`` (ascending)."""
        ...

    def evaluate(self, reader: PoolReader) -> TaskMetrics:
        """Accuracy on the pool's test split (which must not be empty)."""
        ...

    @property
    def network(self) -> ConvClassifier | None:
        """The torch network to checkpoint (None when there is none to keep)."""
        ...


@dataclass
class CnnTask:
    """The end-to-end T on the pixels."""

    model: ConvClassifier
    device: str = "auto"

    def outputs(self, reader: PoolReader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return task_outputs(self.model, reader, ids, device=self.device)

    def evaluate(self, reader: PoolReader) -> TaskMetrics:
        from dgaal_core.model.data import ArraySource
        from dgaal_core.model.task import evaluate_task

        x, y = reader.read_test()
        source = ArraySource(x, y.astype(np.int64))
        return evaluate_task(self.model, source, reader.num_classes, device=self.device)

    @property
    def network(self) -> ConvClassifier | None:
        return self.model


@dataclass
class HeadTask:
    """A linear head on the pool's embeddings; its features are the standardised embeddings."""

    head: LinearHead
    embeddings: Embeddings

    def outputs(self, reader: PoolReader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.embeddings.pool(np.asarray(ids, np.int64))
        return self.head.probs(x).astype(np.float32), self.head.features(x)

    def evaluate(self, reader: PoolReader) -> TaskMetrics:
        x = self.embeddings.test()
        y = reader.test_labels.astype(np.int64)
        if x.shape[0] != y.size:
            raise PoolFormatError(
                f"{reader.path}: {x.shape[0]} test rows are embedded but the pool has {y.size}; "
                "run `dgaal pool embed` again"
            )
        return metrics_of(self.head.probs(x), y, reader.num_classes)

    @property
    def network(self) -> ConvClassifier | None:
        return None  # refitted in seconds from the labels; nothing to keep


def metrics_of(probs: np.ndarray, y: np.ndarray, num_classes: int) -> TaskMetrics:
    """:class:`TaskMetrics` of class probabilities ``probs`` [N, K] for labels ``y``."""
    hit = probs.argmax(1) == y
    counts = np.bincount(y, minlength=num_classes)
    hits = np.bincount(y[hit], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = hits / counts  # NaN where a class has no sample
    loss = -np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None))
    return TaskMetrics(
        accuracy=float(hit.mean()),
        per_class_accuracy=tuple(float(a) for a in per_class),
        mean_loss=float(loss.mean()),
        num_samples=int(y.size),
    )


def require_embeddings(
    reader: PoolReader, task_model: str, strategy: str | None = None, d1_input: str = "image"
) -> Embeddings | None:
    """The pool's embeddings when T (``task_model``), ``strategy`` or D1 (``d1_input``) needs
    them, a one-line error naming what needs them when the pool has none; None when nothing
    needs them."""
    picker = None if strategy is None else get_strategy(strategy)
    picks = picker is not None and Need.EMBEDDINGS in picker.needs(picker.defaults)
    trains_d1 = picker is None or Need.GAN in picker.needs(picker.defaults)
    d1_reads = d1_input == "embedding" and trains_d1
    if task_model == "cnn" and not picks and not d1_reads:
        return None
    emb = open_embeddings(reader.path)
    if emb is None:
        what = (
            f"--task-model {task_model} trains T on the pool's embeddings"
            if task_model != "cnn"
            else f"strategy '{strategy}' picks on the pool's embeddings"
            if picks
            else "--d1-input embedding has D1 read the pool's embeddings"
        )
        raise ConfigError(
            f"{what}, and {reader.path} has none; run `dgaal pool embed {reader.path} "
            "--model ENCODER.onnx` first"
        )
    if emb.rows("test") != reader.num_test:
        raise PoolFormatError(
            f"{reader.path}: {emb.rows('test')} test rows are embedded but the pool has "
            f"{reader.num_test}; run `dgaal pool embed` again"
        )
    return emb


def fit_task(
    reader: PoolReader,
    task_model: str,
    run: RunConfig,
    seed: int,
    n: int,
    *keys: str,
    progress: Progress | None = None,
    stage: str = "Task model",
) -> TaskModel:
    """A fresh T of kind ``task_model`` trained on the labelled rows of ``reader`` for round
    ``n`` (0: the initial set); the CNN's init and batches are seeded from ``seed``, ``n`` and
    ``keys``, the linear head needs no seed (deterministic)."""
    from dgaal_core.model.networks import build_task_model
    from dgaal_core.model.task import train_task

    labelled = reader.ids(State.LABELLED)
    embeddings = require_embeddings(reader, task_model)
    if task_model in ("linear", "linear-ssl") and embeddings is not None:
        x, y = embeddings.pool(labelled), reader.labels[labelled]
        extra = (
            embeddings.pool(reader.ids(State.UNLABELLED)) if task_model == "linear-ssl" else None
        )
        head = fit_linear_head(x, y, reader.num_classes, candidates=extra)
        return HeadTask(head, embeddings)
    task = build_task_model(run.model, derive_seed(run.train.seed, "task", n, *keys))
    rng = np.random.default_rng(derive_seed(seed, "task", n, *keys))
    source = PoolSource(reader, labelled, reader.labels[labelled])
    train_task(task, source, run.train, rng, progress=progress, stage=stage)
    return CnnTask(task, run.train.device)
