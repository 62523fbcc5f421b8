"""What a round's strategy selects from: the candidates, and what the strategy asks for about
them, computed on first use (:class:`RoundContext`, the round's
:class:`~dgaal_core.loop.strategies.SelectionContext`).

D1's scores and the latents of a shortlist come from the exported sampler (onnxruntime), never
from PyTorch; T's outputs come from the previous round's T. Whatever was computed stays for the
rest of the run: the human oracle's Label Studio tasks carry each queried row's D1 score, and
the round record D1's ROC AUC (labelled vs candidates).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dgaal_core.errors import ConfigError
from dgaal_core.loop.serving import ServedModels
from dgaal_core.loop.task_models import TaskModel
from dgaal_core.pool.embeddings import open_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores, positives above negatives (ties count half): the
    Mann-Whitney U over average ranks; NaN when either side is empty.

    Equal to ``sklearn.metrics.roc_auc_score`` (the tests compare them), computed here because
    importing scikit-learn costs every ``dgaal round`` process about 2 s (measured on 2 cores).
    """
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    both = np.concatenate([positive, negative]).astype(np.float64)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last copy of each distinct score
    average = upper - (counts - 1) / 2.0  # ties share the mean of their ranks (1-based)
    u = average[inverse[: positive.size]].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


class RoundContext:
    """The candidates of a round's pool and, lazily, D1's scores, the sampler's latents and T's
    outputs for them. ``served`` and ``task`` are called at most once, when first needed."""

    def __init__(
        self,
        reader: PoolReader,
        served: Callable[[], ServedModels],
        task: Callable[[], TaskModel],
    ) -> None:
        self._reader, self._served, self._task = reader, served, task
        self.candidates = reader.ids(State.UNLABELLED)
        self.generated = reader.fields["origin"][self.candidates] == Origin.GENERATED
        self._scores: np.ndarray | None = None
        self._outputs: tuple[np.ndarray, np.ndarray] | None = None
        self.d1_auc: float | None = None  # set when D1 scored the candidates
        self.seconds_scoring = 0.0

    @property
    def pool_path(self) -> Path:
        return self._reader.path

    def d1_scores(self) -> np.ndarray:
        if self._scores is None:
            import time

            served = self._served()
            t0 = time.perf_counter()
            self._scores = served.score_pool(self.pool_path, self.candidates)
            labelled = served.score_pool(self.pool_path, self._reader.ids(State.LABELLED))
            self.d1_auc = roc_auc(labelled, self._scores)  # how well D1 tells the pools apart
            self.seconds_scoring += time.perf_counter() - t0
        return self._scores

    def d1_scores_of(self, ids: np.ndarray) -> np.ndarray | None:
        """D1's scores of candidate ``ids`` if D1 scored this round (None otherwise)."""
        if self._scores is None:
            return None
        return self._scores[np.searchsorted(self.candidates, ids)]

    def latents(self, ids: np.ndarray) -> np.ndarray:
        # G1's z, also on a pool with embeddings: spreading the shortlist over the embeddings
        # was measured worse on CIFAR-10 (benchmarks/results/al_features_dgaal_spread_cifar)
        return self._served().latents(self.pool_path, ids)

    def _task_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        if self._outputs is None:  # probabilities and features come from one pass
            self._outputs = self._task().outputs(self._reader, self.candidates)
        return self._outputs

    def task_probs(self) -> np.ndarray:
        return self._task_outputs()[0]

    def task_features(self) -> tuple[np.ndarray, np.ndarray]:
        _, labelled = self._task().outputs(self._reader, self._reader.ids(State.LABELLED))
        return self._task_outputs()[1], labelled

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        emb = open_embeddings(self.pool_path)
        if emb is None:
            raise ConfigError(
                f"{self.pool_path}: this strategy picks on the pool's embeddings, and it has none; "
                f"run `dgaal pool embed {self.pool_path} --model ENCODER.onnx` first"
            )
        return emb.pool(self.candidates), emb.pool(self._reader.ids(State.LABELLED))
