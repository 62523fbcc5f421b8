"""The phases of one round, each a method of :class:`RoundJob` (the sequence is
:meth:`dgaal_core.loop.round.Round.run`; the phases and their commits are described there).

A job lives for one run of one round: it holds the pool's writer, the round's own config, the
models it exported (so selection and generation share one export) and the T it trained for
selection (so the human oracle's suggestions reuse it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dgaal_core.loop.config import RoundConfig, check_budget
from dgaal_core.loop.context import RoundContext
from dgaal_core.loop.oracle import simulated_answers, write_query_package
from dgaal_core.loop.serving import Embedder, Exporter, ExportRequest, ServedModels
from dgaal_core.loop.sources import PoolSource, d1_scale, d1_sources
from dgaal_core.loop.state import (
    PendingRound,
    Phase,
    RoundRecord,
    round_records,
    set_pending,
    set_work_folder,
    total_queries,
)
from dgaal_core.loop.strategies import Need
from dgaal_core.loop.task_models import CnnTask, TaskModel, fit_task, require_embeddings
from dgaal_core.loop.workdir import (
    CHECKPOINT_FILE,
    QUERIES_DIR,
    TRAINED_FILE,
    previous_checkpoint,
    round_dir,
)
from dgaal_core.model.checkpoint import load_checkpoint, save_checkpoint, trainer_from_checkpoint
from dgaal_core.model.config import RunConfig
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.training import DGAALTrainer
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.pool.writer import PoolWriter
from dgaal_core.progress import Progress
from dgaal_core.values import derive_seed

Log = Callable[[str], None]


class RoundJob:
    """One run of round ``n`` on a pool, under its writer ``writer``."""

    def __init__(
        self,
        pool_path: Path,
        n: int,
        config: RoundConfig,
        exporter: Exporter,
        writer: PoolWriter,
        workdir: Path,
        *,
        recorded: Path | None = None,
        progress: Progress | None = None,
        log: Log = print,
        embedder: Embedder | None = None,
    ) -> None:
        self.pool_path, self.n, self.config = pool_path, n, config
        self.embedder = embedder  # embeds rows that joined since the pool's embeddings were made
        self.recorded = recorded  # the work folder the pool's last round ran in
        self._prev: Path | None = None
        self.exporter, self.writer, self.workdir = exporter, writer, workdir
        self.rdir = round_dir(workdir, n)
        self.progress, self.log = progress, log
        self.strategy = config.strategy_object
        self.settings = config.selection()
        self.timings: dict[str, float] = {}
        self._run: RunConfig | None = None
        self._served: ServedModels | None = None
        self._task: TaskModel | None = None  # T for selection and suggestions, this run
        self._coevolved: DGAALTrainer | None = None  # kept for T's checkpoint in the same run

    # ---- helpers ---------------------------------------------------------------------------
    def _timed(self, phase: str, start: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - start, 3)

    def run_config(self, reader: PoolReader) -> RunConfig:
        """The models' configuration for this pool (the preset plus the round's overrides)."""
        if self._run is None:
            c = self.config
            emb = require_embeddings(reader, c.task_model, c.strategy, c.d1_input)
            dim = emb.dim if emb is not None and c.d1_input == "embedding" else 0
            self._run = c.run_config(reader.image_shape, reader.num_classes, dim)
        return self._run

    def _save(self, name: str, trainer: DGAALTrainer, task: TaskModel | None = None) -> None:
        extra = {"noise_spread": self.config.noise_spread}  # what `dgaal export` exports with
        network = None if task is None else task.network
        save_checkpoint(self.rdir / name, trainer, task=network, round_index=self.n, extra=extra)

    def _previous_checkpoint(self) -> Path:
        if self._prev is None:  # looked for (and a missing one said) once per run
            self._prev = previous_checkpoint(self.workdir, self.n, self.recorded, self.log)
        return self._prev

    # ---- phase 1: Algorithm 1 ----------------------------------------------------------------
    def _continued_trainer(self, reader: PoolReader) -> DGAALTrainer | None:
        """The previous round's co-evolved trainer, if Algorithm 1 already ran for this model."""
        run, prev = self.run_config(reader), self._previous_checkpoint()
        if not prev.exists():
            return None
        ckpt = load_checkpoint(prev)
        if ckpt["config"]["model"] != run.model.to_dict() or int(ckpt["step"]) == 0:
            return None
        self.log(f"selecting with the co-evolved D1 of {prev} (Algorithm 1 ran once, earlier)")
        return trainer_from_checkpoint(ckpt, train_config=run.train, rng=True)

    def _fresh_or_warm_trainer(self, reader: PoolReader) -> DGAALTrainer:
        """A new trainer, warm-started from the previous round's models when they match."""
        run, prev = self.run_config(reader), self._previous_checkpoint()
        if prev.exists():
            ckpt = load_checkpoint(prev)
            if ckpt["config"]["model"] == run.model.to_dict():
                self.log(f"warm start from {prev}")
                return trainer_from_checkpoint(ckpt, train_config=run.train, rng=False)
            self.log(f"not warm-starting: {prev} was made with another model config")
        return DGAALTrainer.create(run, scale=d1_scale(reader, run.model.embedding_dim))

    def train(self, reader: PoolReader) -> DGAALTrainer:
        """Algorithm 1, or (the paper's loop) the D1 that co-evolution left in round n-1."""
        t0 = time.perf_counter()
        trainer = None
        needs_gan = Need.GAN in self.strategy.needs(self.settings)
        if needs_gan and not self.config.retrains_gan():
            trainer = self._continued_trainer(reader)
        if trainer is None:
            trainer = self._fresh_or_warm_trainer(reader)
            if needs_gan:
                real = reader.ids(origin=Origin.REAL)
                real = real[reader.states[real] != State.EXCLUDED]
                dim = trainer.model_config.embedding_dim
                labelled, unlabelled = d1_sources(reader, dim, State.LABELLED, State.UNLABELLED)
                trainer.train_gan(
                    labelled,
                    unlabelled,
                    real=PoolSource(reader, real),
                    progress=self.progress,
                )
        self._save(TRAINED_FILE, trainer)
        self._timed("train", t0)
        return trainer

    # ---- phase 2: export ---------------------------------------------------------------------
    def serve(self, trainer: DGAALTrainer) -> ServedModels:
        """The sampler and generator exported to ONNX and served (once per run)."""
        if self._served is None:
            t0 = time.perf_counter()
            mc, c = trainer.model_config, self.config
            run = self._run or c.run_config(mc.image_shape, mc.num_classes, mc.embedding_dim)
            request = ExportRequest(
                trainer.models, run, self.rdir, self.n, self.pool_path, self.config.noise_spread
            )
            self._served = self.exporter(request)
            self._timed("export", t0)
        return self._served

    # ---- embeddings -----------------------------------------------------------------------------
    def embed_new_rows(self) -> None:
        """Embed the rows that joined the pool since its embeddings were made (generated images,
        new images), with the same encoder; nothing when the pool has no embeddings. The round
        holds the writer lock, so this is the only writer."""
        if self.embedder is None:
            return
        t0 = time.perf_counter()
        if done := self.embedder(self.pool_path, self.progress):
            self.log(f"embedded {done} new rows with the pool's encoder")
            self._timed("embed", t0)

    # ---- T for selection -----------------------------------------------------------------------
    def previous_task(self, reader: PoolReader) -> TaskModel:
        """T as it stands (trained at the end of the last round), or trained now for round 1.

        Kept for the run: selection (task-aware ranking) and the human oracle's suggestions
        both ask for it, and round 1 would otherwise train it twice. A linear head is refitted
        (seconds) rather than kept: on the same labels it is the same head."""
        if self._task is None:
            run, prev = self.run_config(reader), self._previous_checkpoint()
            if self.config.task_model == "cnn" and prev.exists():
                if (ckpt := load_checkpoint(prev)).get("task") is not None:
                    task = build_task_model(run.model, run.train.seed)
                    task.load_state_dict(ckpt["task"])
                    self._task = CnnTask(task, self.config.device)
            if self._task is None:
                t0 = time.perf_counter()
                self._task = self.fit_task(reader, "pre", stage="T to select with")
                self._timed("task to select", t0)  # its own line, not hidden inside "select"
        return self._task

    def fit_task(self, reader: PoolReader, *keys: str, stage: str = "Task model") -> TaskModel:
        """A fresh T trained on the labelled rows; its init and batches are seeded per round."""
        run = self.run_config(reader)
        return fit_task(
            reader, self.config.task_model, run, self.config.seed, self.n, *keys,
            progress=self.progress, stage=stage,
        )  # fmt: skip

    # ---- phase 3: score and select -----------------------------------------------------------
    def select(self, reader: PoolReader, trainer: DGAALTrainer) -> tuple[np.ndarray, RoundContext]:
        """The strategy's picks (ascending ids) and the context they were made in."""
        budget = check_budget(self.config, reader, self.log)
        context = RoundContext(
            reader,
            lambda: self.serve(trainer),
            lambda: self.previous_task(reader),
        )
        t0 = time.perf_counter()
        rng = np.random.default_rng(derive_seed(self.config.seed, "select", self.n))
        picked = self.strategy.select(context, budget, rng, self.settings)
        if context.d1_auc is not None:
            self.timings["score"] = round(context.seconds_scoring, 3)
        self._timed("select", t0 + self.timings.get("task to select", 0.0))
        return picked, context

    # ---- phase 4: the oracle, COMMIT A ---------------------------------------------------------
    def label(self, reader: PoolReader, picked: np.ndarray, context: RoundContext) -> PendingRound:
        """COMMIT A (or the hand-off to a person): the picks are labelled or queried."""
        labels = reader.labels[picked]
        free = picked[labels >= 0]  # generated rows inherited their parent's label
        need = picked[labels < 0]
        oracle = self.config.oracle
        if oracle == "auto":
            oracle = "simulated" if reader.has_truth else "human"
        w = self.writer
        w.set_state(free, State.LABELLED, round_no=self.n)
        phase, queries = Phase.SELECTED, None
        if oracle == "simulated":
            w.set_labels(need, simulated_answers(reader, need))
            w.set_state(need, State.LABELLED, round_no=self.n)
        else:
            queries = self._query_package(reader, need, context)
            w.set_state(need, State.QUERIED)
            phase = Phase.AWAITING_LABELS if need.size else Phase.SELECTED
        pending = PendingRound(
            round=self.n,
            phase=phase,
            selected=tuple(picked.tolist()),
            queried=tuple(need.tolist()),  # the rows a person or the simulated oracle answers
            config=self.config,
            oracle=oracle,
            oracle_queries=int(need.size),
            free_labels=int(free.size),
            timings=dict(self.timings),
            d1_auc=context.d1_auc,
            queries=queries,
        )
        set_pending(w, pending)
        w.commit()
        return pending

    def _query_package(
        self, reader: PoolReader, need: np.ndarray, context: RoundContext
    ) -> dict[str, str]:
        """The files a person labels ``need`` with, T's suggestions and D1's scores included."""
        suggested = confidence = None
        if need.size and np.sum(reader.states == State.LABELLED) >= 2:  # else no T to suggest
            probs, _ = self.previous_task(reader).outputs(reader, need)
            suggested, confidence = probs.argmax(1), probs.max(1)
        return write_query_package(
            self.rdir / QUERIES_DIR,
            need,
            reader.read_images(need),
            suggested,
            reader.class_names,
            round_no=self.n,
            pool_id=reader.pool_id,
            confidence=confidence,
            d1_scores=context.d1_scores_of(need),
            files_root=self.workdir.parent,  # LS document root: storage = the workdir
        )

    # ---- phase 5: co-evolution ---------------------------------------------------------------
    def coevolve(self) -> None:
        """Eq. 9 on (X_L, X_C): the D1 the next round selects with (when it does not re-run
        Algorithm 1). Nothing to learn when no candidate is left."""
        trainer = trainer_from_checkpoint(load_checkpoint(self.rdir / TRAINED_FILE))
        if self.strategy.coevolve:
            t0 = time.perf_counter()
            dim = trainer.model_config.embedding_dim
            with PoolReader(self.pool_path) as r:
                labelled, candidates = d1_sources(r, dim, State.LABELLED, State.UNLABELLED)
                if len(labelled) and len(candidates):
                    trainer.co_evolve_d1(labelled, candidates, progress=self.progress)
                else:
                    self.log("no candidates left: D1 has nothing to co-evolve on")
            self._timed("coevolve", t0)
        self._save(CHECKPOINT_FILE, trainer)
        self._coevolved = trainer

    # ---- phase 6: generation, COMMIT B ---------------------------------------------------------
    def generate(self, pending: PendingRound) -> PendingRound:
        """COMMIT B: append x_g = G(x_s) for the selected rows below the depth limit."""
        t0 = time.perf_counter()
        added, distance, span = 0, None, None
        with PoolReader(self.pool_path) as r:
            picked = np.asarray(pending.selected, dtype=np.int64)
            parents = picked[r.fields["depth"][picked] < self.config.depth_limit]
            images = None
            if parents.size and self.strategy.generate:
                served = self._served  # exported for selection; after a resume, export again
                if served is None:
                    trained = load_checkpoint(self.rdir / TRAINED_FILE)
                    served = self.serve(trainer_from_checkpoint(trained))
                x_s = r.read_images(parents)
                images = served.generate(x_s, derive_seed(self.config.seed, "noise", self.n))
                diff = np.abs(images.astype(np.int16) - x_s.astype(np.int16))
                distance = float(diff.mean() / 255.0)  # mean |x_g - x_s|
            labels = r.labels[parents]
        w = self.writer
        if images is not None:
            k = round(self.config.augment_ratio * parents.size)
            new = w.append(images, labels=labels, parents=parents)
            if k:  # section 4.3.2: part of x_g goes straight into the labelled set
                w.set_state(new[:k], State.LABELLED, round_no=self.n)
            added = int(new.size)
            if added:
                span = (int(new.min()), int(new.max()) + 1)
        self._timed("generate", t0)
        moved = pending.moved(
            Phase.GENERATED,
            generated_added=added,
            generated_distance=distance,
            generated_ids=span,
            timings=dict(self.timings),
        )
        set_pending(w, moved)
        w.commit()
        self.embed_new_rows()  # x_g get their embeddings before T or the next round reads them
        return moved

    # ---- phase 7: T, COMMIT C ------------------------------------------------------------------
    def finish(self, pending: PendingRound) -> RoundRecord:
        """Train T from scratch, evaluate it, COMMIT C (the round record)."""
        t0 = time.perf_counter()
        with PoolReader(self.pool_path) as r:
            run = self.run_config(r)
            task = self.fit_task(r)
            metrics = task.evaluate(r) if r.num_test else None
            trainer = self._coevolved or trainer_from_checkpoint(
                load_checkpoint(self.rdir / CHECKPOINT_FILE)
            )
            self._save(CHECKPOINT_FILE, trainer, task)
            st, org = r.states, r.fields["origin"]
            prior = total_queries(round_records(r))
            sel_labels = r.labels[np.asarray(pending.selected, dtype=np.int64)]
            picked_classes = np.bincount(sel_labels[sel_labels >= 0], minlength=r.num_classes)
            labelled = int(np.sum(st == State.LABELLED))
            real = int(np.sum(org == Origin.REAL))
            labelled_real = int(np.sum((st == State.LABELLED) & (org == Origin.REAL)))
            candidates = int(np.sum(st == State.UNLABELLED))
            candidates_real = int(np.sum((st == State.UNLABELLED) & (org == Origin.REAL)))
        self._timed("task", t0)
        record = RoundRecord(
            round=self.n,
            strategy=self.config.strategy,
            oracle=pending.oracle,
            selected=pending.selected,
            oracle_queries=pending.oracle_queries,
            free_labels=pending.free_labels,
            generated_added=pending.generated_added,
            labelled=labelled,
            labelled_real=labelled_real,
            labelled_ratio=labelled / max(1, real),
            oracle_queries_total=prior + pending.oracle_queries,
            candidates=candidates,
            real_images=real,
            candidates_real=candidates_real,
            picked_classes=tuple(picked_classes.tolist()),  # class histogram of the picks
            generated_share=pending.free_labels / max(1, len(pending.selected)),
            d1_auc=pending.d1_auc,
            generated_distance=pending.generated_distance,
            generated_ids=pending.generated_ids,
            accuracy=None if metrics is None else metrics.accuracy,
            per_class_accuracy=None if metrics is None else tuple(metrics.per_class_accuracy),
            test_loss=None if metrics is None else metrics.mean_loss,
            timings=dict(self.timings),
            config=self.config,
            selection=self.settings.to_dict(),  # the strategy's defaults resolved
            run_config=run.to_dict(),
            workdir=str(self.rdir),
        )
        w = self.writer
        w.append_round(record.to_dict())
        set_pending(w, None)
        set_work_folder(w, self.workdir)
        w.commit()
        return record
