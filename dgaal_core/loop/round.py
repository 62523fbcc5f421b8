"""One active-learning round: Algorithm 2 of the paper around Algorithm 1, made crash-safe.

Phases of round n (work folder ``<pool>.dgaal/round-000n/``):

1. train G, D1, D2 (Algorithm 1) in the first round; later rounds take the D1 (and G) that
   co-evolution left in round n-1, as the paper's Algorithm 2 does (``retrain_gan`` re-runs
   Algorithm 1 every round, warm-started: VAAL's way)                -> ``trained.pt``
2. export the sampler and generator to ONNX (parity-checked)          -> ``*.onnx``
3. score every candidate with onnxruntime; select the N lowest (``dgaal-paper``), or, for
   ``dgaal``, N spread over the k*N lowest of D1's rank fused with T's uncertainty, with a cap on
   the share of generated images (``RoundConfig.selection``)
4. oracle: generated picks carry their parent's label (free); real ones are answered by the
   simulated oracle, or queried from a person (the round stops here: ``dgaal label`` resumes it)
   COMMIT A: picks -> labelled, ``meta.pending_round.phase = "selected"``
5. co-evolve D1 on (X_L, X_C) (Eq. 9)                               -> ``checkpoint.pt``
6. x_g = G(x_s) with onnxruntime, appended as candidates with y_s
   COMMIT B: new rows, ``phase = "generated"``
7. train T from scratch on the labelled set; evaluate on the test split -> ``checkpoint.pt`` (+T)
   COMMIT C: the round record; pending cleared

A kill at any moment leaves the pool at one of these commits. The next ``dgaal round`` reads
``pending_round`` and redoes only what is missing, with the interrupted round's own config:
before A it reruns the round (same seed, same picks); after A it redoes 5-7 from ``trained.pt``
(co-evolution is deterministic given the trainer's saved random streams); after B it redoes 7.
Labels are committed once and images appended once, because each commit moves the phase on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError, EmptyPoolError, PoolExhaustedError
from dgaal_core.loop.oracle import simulated_answers, write_query_package
from dgaal_core.loop.parts import (
    Exporter,
    PoolSource,
    RoundConfig,
    ServedModels,
    latents,
    roc_auc,
    task_outputs,
)
from dgaal_core.loop.strategies import (
    entropy,
    fuse_ranks,
    select_coreset,
    select_lowest_capped,
    select_max_entropy,
    select_random,
    select_spread,
    strategy_spec,
)
from dgaal_core.model.checkpoint import load_checkpoint, save_checkpoint, trainer_from_checkpoint
from dgaal_core.model.config import RunConfig
from dgaal_core.model.data import ArraySource
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.task import evaluate_task, train_task
from dgaal_core.model.training import DGAALTrainer, resolve_device
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import CHECKPOINT_FILE, Origin, State, round_dir, work_dir
from dgaal_core.pool.writer import PoolWriter
from dgaal_core.values import derive_seed

Log = Callable[[str], None]


class AwaitingLabelsError(DgaalError):
    """The round is waiting for a person's answers (``dgaal label``)."""


class Round:
    """Runs (or resumes) one round on a pool. See the module docstring for the phases."""

    def __init__(
        self,
        pool_path: Path,
        config: RoundConfig,
        exporter: Exporter,
        *,
        workdir: Path | None = None,
        progress: bool = True,
        log: Log = print,
    ):
        self.pool_path = Path(pool_path)
        self.config = config
        self.exporter = exporter
        self.workdir = workdir or work_dir(self.pool_path)
        self.progress = progress
        self.log = log
        self.timings: dict[str, float] = {}
        self._served: ServedModels | None = None
        self._w: PoolWriter | None = None
        self._run_cfg: RunConfig | None = None  # derived once per run from config + pool shape
        self._coevolved: DGAALTrainer | None = None  # kept for T's checkpoint in the same run
        self._diagnostics: dict[str, Any] = {}  # selection diagnostics for the round record
        # (sorted candidate ids, their D1 scores) of this run's selection, for the human's tasks
        self._d1_scores: tuple[np.ndarray, np.ndarray] | None = None
        self._prev_task: tuple[int, Any] | None = None  # (round, T) for this run

    # ---- helpers ---------------------------------------------------------------------------
    def _timed(self, phase: str, start: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - start, 3)

    @property
    def _writer(self) -> PoolWriter:
        assert self._w is not None, "phases run inside Round.run()"
        return self._w

    def _run_config(self, image_shape: tuple[int, int, int], num_classes: int) -> RunConfig:
        if self._run_cfg is None:
            self._run_cfg = self.config.run_config(image_shape, num_classes)
        return self._run_cfg

    def _reader(self) -> PoolReader:
        return PoolReader(self.pool_path)

    def _source(self, reader: PoolReader, state: State, labels: bool = False) -> PoolSource:
        ids = reader.ids(state)
        return PoolSource(reader, ids, reader.labels[ids] if labels else None)

    def _fresh_or_warm_trainer(self, n: int, reader: PoolReader) -> DGAALTrainer:
        run = self._run_config(reader.image_shape, reader.num_classes)
        prev = round_dir(self.workdir, n - 1) / CHECKPOINT_FILE
        if prev.exists():
            ckpt = load_checkpoint(prev)
            if ckpt["config"]["model"] == run.model.to_dict():
                self.log(f"warm start from {prev}")
                return trainer_from_checkpoint(ckpt, train_config=run.train, rng=False)
            self.log(f"not warm-starting: {prev} was made with another model config")
        return DGAALTrainer.create(run)

    # ---- phases ----------------------------------------------------------------------------
    def _continued_trainer(self, n: int, reader: PoolReader) -> DGAALTrainer | None:
        """The previous round's co-evolved trainer, if Algorithm 1 already ran for this model."""
        run = self._run_config(reader.image_shape, reader.num_classes)
        prev = round_dir(self.workdir, n - 1) / CHECKPOINT_FILE
        if not prev.exists():
            return None
        ckpt = load_checkpoint(prev)
        if ckpt["config"]["model"] != run.model.to_dict() or int(ckpt["step"]) == 0:
            return None
        self.log(f"selecting with the co-evolved D1 of {prev} (Algorithm 1 ran once, earlier)")
        return trainer_from_checkpoint(ckpt, train_config=run.train, rng=True)

    def _train(self, n: int, reader: PoolReader, rdir: Path) -> DGAALTrainer:
        """Algorithm 1, or (the paper's loop) the D1 that co-evolution left in round n-1."""
        t0 = time.perf_counter()
        trainer = None
        needs_gan = strategy_spec(self.config.strategy).needs_gan
        if needs_gan and not self.config.retrains_gan():
            trainer = self._continued_trainer(n, reader)
        if trainer is None:
            trainer = self._fresh_or_warm_trainer(n, reader)
            if needs_gan:
                real = reader.ids(origin=Origin.REAL)
                real = real[reader.states[real] != State.EXCLUDED]
                trainer.train_gan(
                    self._source(reader, State.LABELLED),
                    self._source(reader, State.UNLABELLED),
                    real=PoolSource(reader, real),
                    progress=self.progress,
                )
        save_checkpoint(rdir / "trained.pt", trainer, round_index=n)
        self._timed("train", t0)
        return trainer

    def _serve(self, trainer: DGAALTrainer, n: int, rdir: Path) -> ServedModels:
        if self._served is None:
            t0 = time.perf_counter()
            mc = trainer.model_config
            run = self._run_config(mc.image_shape, mc.num_classes)
            self._served = self.exporter(trainer.models, run, rdir, n, self.pool_path)
            self._timed("export", t0)
        return self._served

    def _previous_task(self, n: int, reader: PoolReader) -> Any:
        """T as it stands (trained at the end of the last round), or trained now for round 1.

        Kept for the run: selection (task-aware ranking) and the human oracle's suggestions
        both ask for it, and round 1 would otherwise train it twice."""
        if self._prev_task is not None and self._prev_task[0] == n:
            return self._prev_task[1]
        run = self._run_config(reader.image_shape, reader.num_classes)
        prev = round_dir(self.workdir, n - 1) / CHECKPOINT_FILE
        task = build_task_model(run.model, run.train.seed)
        if prev.exists() and (ckpt := load_checkpoint(prev)).get("task") is not None:
            task.load_state_dict(ckpt["task"])
        else:
            task = self._fit_task(reader, n, "pre")
        self._prev_task = (n, task)
        return task

    def _fit_task(self, reader: PoolReader, n: int, *keys: str) -> Any:
        """A fresh T trained on the labelled rows; its init and batches are seeded per round."""
        run = self._run_config(reader.image_shape, reader.num_classes)
        task = build_task_model(run.model, derive_seed(run.train.seed, "task", n, *keys))
        rng = np.random.default_rng(derive_seed(self.config.seed, "task", n, *keys))
        labelled = self._source(reader, State.LABELLED, labels=True)
        train_task(task, labelled, run.train, rng, progress=self.progress)
        return task

    def _check_budget(self, reader: PoolReader, *, say: bool = True) -> int:
        """The number of images to select, checked against the candidates left before the
        round writes anything: more than are left is refused unless ``take_all`` asks for all
        of them (an explicit choice: it ends the pool's supply of real candidates)."""
        left = int(np.sum(reader.states == State.UNLABELLED))
        if left == 0:
            raise EmptyPoolError(f"{self.pool_path}: no candidates left; the pool is exhausted")
        if strategy_spec(self.config.strategy).needs_gan and not np.any(
            reader.states == State.LABELLED
        ):
            raise EmptyPoolError(
                f"{self.pool_path}: no labelled images, and strategy '{self.config.strategy}' "
                "trains on labelled and unlabelled ones; create the pool with --initial above 0"
            )
        real_rows = int(np.sum(reader.fields["origin"] == Origin.REAL))
        wanted = self.config.budget_count(real_rows)
        if wanted <= left:
            return wanted
        if not self.config.take_all:
            budget = self.config.budget
            asked = f"{int(budget)}" if budget >= 1 else f"{budget:g} ({wanted} images)"
            raise PoolExhaustedError(
                f"--budget {asked} is more than the {left} candidates left in {self.pool_path}; "
                f"give --budget {left} or less, or --take-all to label all of them"
            )
        if say:
            self.log(f"budget {wanted} > {left} candidates left: taking them all (take_all)")
        return left

    def _select(self, n: int, reader: PoolReader, trainer: DGAALTrainer, rdir: Path) -> np.ndarray:
        spec = strategy_spec(self.config.strategy)
        candidates = reader.ids(State.UNLABELLED)
        budget = self._check_budget(reader)
        t0 = time.perf_counter()
        if spec.source == "d1":
            picked = self._select_d1(n, reader, trainer, rdir, candidates, budget)
        elif spec.source == "none":
            rng = np.random.default_rng(derive_seed(self.config.seed, "select", n))
            picked = select_random(candidates, budget, rng)
        else:
            task = self._previous_task(n, reader)
            probs, feats = task_outputs(task, reader, candidates, device=self.config.device)
            if spec.source == "task_probs":
                picked = select_max_entropy(candidates, probs, budget)
            else:
                labelled = reader.ids(State.LABELLED)
                _, lab_feats = task_outputs(task, reader, labelled, device=self.config.device)
                picked = select_coreset(candidates, feats, lab_feats, budget)
        self._timed("select", t0)
        return picked

    def _select_d1(
        self,
        n: int,
        reader: PoolReader,
        trainer: DGAALTrainer,
        rdir: Path,
        candidates: np.ndarray,
        budget: int,
    ) -> np.ndarray:
        """D1's N lowest (``dgaal-paper``), optionally fused with T's uncertainty, capped in
        generated share and spread over a k*N shortlist in G1's latent space (``dgaal``)."""
        sel = self.config.selection()
        served = self._serve(trainer, n, rdir)
        t1 = time.perf_counter()
        scores = served.score_pool(self.pool_path, candidates)
        self._d1_scores = (candidates, scores)
        labelled = reader.ids(State.LABELLED)
        self._diagnostics["d1_auc"] = roc_auc(
            served.score_pool(self.pool_path, labelled), scores
        )  # labelled vs candidates: how well D1 tells the pools apart
        self._timed("score", t1)
        order = scores
        if sel["task_weight"] > 0:
            task = self._previous_task(n, reader)
            probs, _ = task_outputs(task, reader, candidates, device=self.config.device)
            order = fuse_ranks(scores, -entropy(probs), sel["task_weight"])
        generated = reader.fields["origin"][candidates] == Origin.GENERATED
        cap = sel["generated_cap"]
        m = min(candidates.size, math.ceil(sel["shortlist"] * budget))
        if m <= budget:
            return select_lowest_capped(candidates, order, budget, generated, cap)
        short = select_lowest_capped(candidates, order, m, generated, cap)
        pos = np.searchsorted(candidates, short)
        z = latents(trainer.models.g, reader, short)
        return select_spread(short, order[pos], z, budget, generated[pos], cap)

    def _oracle(self, n: int, picked: np.ndarray, reader: PoolReader, rdir: Path) -> str:
        """COMMIT A (or the human hand-off). Returns the pending phase written."""
        labels = reader.labels[picked]
        free = picked[labels >= 0]  # generated rows inherited their parent's label
        need = picked[labels < 0]
        oracle = self.config.oracle
        if oracle == "auto":
            oracle = "simulated" if reader.has_truth else "human"
        pending: dict[str, Any] = {
            "round": n,
            "config": self.config.to_dict(),
            "selected": picked.tolist(),
            "queried": need.tolist(),  # the rows a person or the simulated oracle answers
            "oracle_queries": int(need.size),
            "free_labels": int(free.size),
            "oracle": oracle,
            "timings": dict(self.timings),
            **self._diagnostics,
        }
        w = self._writer
        w.set_state(free, State.LABELLED, round_no=n)
        if oracle == "simulated":
            w.set_labels(need, simulated_answers(reader, need))
            w.set_state(need, State.LABELLED, round_no=n)
            pending["phase"] = "selected"
        else:
            task = self._previous_task(n, reader) if need.size else None
            suggested = confidence = None
            if task is not None:
                probs, _ = task_outputs(task, reader, need, device=self.config.device)
                suggested, confidence = probs.argmax(1), probs.max(1)
            d1 = None
            if self._d1_scores is not None:  # D1's score of each queried row (sorted candidates)
                cand, scores = self._d1_scores
                d1 = scores[np.searchsorted(cand, need)]
            out = write_query_package(
                rdir / "queries",
                need,
                reader.read_images(need),
                suggested,
                reader.class_names,
                round_no=n,
                pool_id=reader.pool_id,
                confidence=confidence,
                d1_scores=d1,
                files_root=self.workdir.parent,  # LS document root: storage = the workdir
            )
            w.set_state(need, State.QUERIED)
            pending["phase"] = "awaiting_labels" if need.size else "selected"
            pending["queries"] = out
        w.update_meta(pending_round=pending)
        w.commit()
        return str(pending["phase"])

    def _coevolve(self, n: int, rdir: Path) -> DGAALTrainer:
        """Eq. 9 on (X_L, X_C): the D1 the next round selects with (when it does not re-run
        Algorithm 1). Nothing to learn when no candidate is left."""
        trainer = trainer_from_checkpoint(load_checkpoint(rdir / "trained.pt"))
        if strategy_spec(self.config.strategy).coevolve:
            t0 = time.perf_counter()
            with self._reader() as r:
                labelled = self._source(r, State.LABELLED)
                candidates = self._source(r, State.UNLABELLED)
                if len(labelled) and len(candidates):
                    trainer.co_evolve_d1(labelled, candidates, progress=self.progress)
                else:
                    self.log("no candidates left: D1 has nothing to co-evolve on")
            self._timed("coevolve", t0)
        save_checkpoint(rdir / CHECKPOINT_FILE, trainer, round_index=n)
        self._coevolved = trainer
        return trainer

    def _generate(self, n: int, pending: dict[str, Any], rdir: Path) -> int:
        """COMMIT B: append x_g = G(x_s) for the selected rows below the depth limit."""
        t0 = time.perf_counter()
        added = 0
        extra: dict[str, Any] = {}
        with self._reader() as r:
            picked = np.asarray(pending["selected"], dtype=np.int64)
            parents = picked[r.fields["depth"][picked] < self.config.depth_limit]
            images = None
            if parents.size and strategy_spec(self.config.strategy).generate:
                served = self._served  # exported for selection; after a resume, export again
                if served is None:
                    trainer = trainer_from_checkpoint(load_checkpoint(rdir / "trained.pt"))
                    served = self._serve(trainer, n, rdir)
                x_s = r.read_images(parents)
                images = served.generate(
                    x_s, derive_seed(self.config.seed, "noise", n), self.config.noise_spread
                )
                diff = np.abs(images.astype(np.int16) - x_s.astype(np.int16))
                extra["generated_distance"] = float(diff.mean() / 255.0)  # mean |x_g - x_s|
            labels = r.labels[parents]
        w = self._writer
        if images is not None:
            k = round(self.config.augment_ratio * parents.size)
            new = w.append(images, labels=labels, parents=parents)
            if k:  # section 4.3.2: part of x_g goes straight into the labelled set
                w.set_state(new[:k], State.LABELLED, round_no=n)
            added = int(new.size)
            if added:
                extra["generated_ids"] = [int(new.min()), int(new.max()) + 1]
        self._timed("generate", t0)
        w.update_meta(
            pending_round={
                **pending,
                **extra,
                "phase": "generated",
                "generated_added": added,
                "timings": dict(self.timings),
            }
        )
        w.commit()
        return added

    def _task(self, n: int, pending: dict[str, Any], rdir: Path) -> dict[str, Any]:
        """Train T from scratch, evaluate, COMMIT C (the round record)."""
        t0 = time.perf_counter()
        with self._reader() as r:
            run = self._run_config(r.image_shape, r.num_classes)
            task = self._fit_task(r, n)
            metrics = None
            if r.num_test:
                test_x, test_y = r.read_test()
                metrics = evaluate_task(
                    task,
                    ArraySource(test_x, test_y.astype(np.int64)),
                    r.num_classes,
                    device=run.train.device,
                )
            trainer = self._coevolved or trainer_from_checkpoint(
                load_checkpoint(rdir / CHECKPOINT_FILE)
            )
            save_checkpoint(rdir / CHECKPOINT_FILE, trainer, task=task, round_index=n)
            st, org = r.states, r.fields["origin"]
            prior_queries = sum(int(x.get("oracle_queries", 0)) for x in r.rounds())
            sel_labels = r.labels[np.asarray(pending["selected"], dtype=np.int64)]
            picked_classes = np.bincount(sel_labels[sel_labels >= 0], minlength=r.num_classes)
            picked_classes = picked_classes.tolist()  # class histogram of the picks
            labelled = int(np.sum(st == State.LABELLED))
            real = int(np.sum(org == Origin.REAL))
        self._timed("task", t0)
        record: dict[str, Any] = {
            "round": n,
            "strategy": self.config.strategy,
            "oracle": pending["oracle"],
            "selected": pending["selected"],
            "oracle_queries": pending["oracle_queries"],
            "free_labels": pending["free_labels"],
            "generated_added": int(pending.get("generated_added", 0)),
            "labelled": labelled,
            "labelled_real": int(np.sum((st == State.LABELLED) & (org == Origin.REAL))),
            "labelled_ratio": labelled / max(1, real),
            "oracle_queries_total": prior_queries + int(pending["oracle_queries"]),
            "candidates": int(np.sum(st == State.UNLABELLED)),
            "picked_classes": picked_classes,
            "generated_share": pending["free_labels"] / max(1, len(pending["selected"])),
            "d1_auc": pending.get("d1_auc"),
            "generated_distance": pending.get("generated_distance"),
            "generated_ids": pending.get("generated_ids"),
            "accuracy": None if metrics is None else metrics.accuracy,
            "per_class_accuracy": None if metrics is None else list(metrics.per_class_accuracy),
            "test_loss": None if metrics is None else metrics.mean_loss,
            "timings": dict(self.timings),
            "config": self.config.to_dict(),
            "selection": self.config.selection(),  # the strategy's defaults resolved
            "run_config": run.to_dict(),
            "workdir": str(rdir),
        }
        w = self._writer
        w.append_round(record)
        w.update_meta(pending_round=None)
        w.commit()
        return record

    # ---- the round ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the next round, or finish an interrupted one; returns the round record, or
        ``{"status": "awaiting_labels", ...}`` when a person must answer first.

        Holds the pool's writer lock throughout, so a second round (or ``dgaal label``) on the
        same pool fails at once with a message naming this one.
        """
        self._served, self._run_cfg, self._coevolved = None, None, None  # fresh per run
        self._diagnostics, self._d1_scores, self._prev_task = {}, None, None
        if self.workdir.exists() and not self.workdir.is_dir():
            raise DgaalError(f"--workdir {self.workdir}: exists and is not a folder")
        with PoolWriter(self.pool_path, purpose="dgaal round") as w:
            self._w = w
            try:
                return self._run()
            finally:
                self._w = None

    def _run(self) -> dict[str, Any]:
        with self._reader() as r:
            n = len(r.rounds()) + 1
            pending = r.meta.get("pending_round")
            queried = int(np.sum(r.states == State.QUERIED))
        rdir = round_dir(self.workdir, n)
        if pending and pending["round"] == n:
            self.config = RoundConfig.from_dict(pending["config"])
            self.timings = dict(pending.get("timings", {}))
            if pending["phase"] == "awaiting_labels" or queried:
                raise AwaitingLabelsError(
                    f"round {n} is waiting for {queried} answers: fill in "
                    f"{rdir / 'queries' / 'queries.csv'} (or export the Label Studio project) "
                    f"and run `dgaal label --pool {self.pool_path} ANSWERS`"
                )
            self.log(f"resuming round {n} after phase '{pending['phase']}'")
        else:
            with self._reader() as r:  # refuse bad settings before anything is written
                r.check_shards()  # a missing test shard would otherwise surface only after training
                self._check_budget(r, say=False)
                run = self._run_config(r.image_shape, r.num_classes)
            resolve_device(run.train.device)  # --device cuda without a GPU
            rdir.mkdir(parents=True, exist_ok=True)
            with self._reader() as r:
                trainer = self._train(n, r, rdir)
                picked = self._select(n, r, trainer, rdir)
                phase = self._oracle(n, picked, r, rdir)
            if phase == "awaiting_labels":
                with self._reader() as r:
                    queried = int(np.sum(r.states == State.QUERIED))
                return {
                    "status": "awaiting_labels",
                    "round": n,
                    "queried": queried,
                    "queries": str(rdir / "queries"),
                }
            with self._reader() as r:
                pending = r.meta["pending_round"]
        if pending["phase"] == "selected":
            self._coevolve(n, rdir)
            with self._reader() as r:
                pending = r.meta["pending_round"]
            self._generate(n, pending, rdir)
            with self._reader() as r:
                pending = r.meta["pending_round"]
        return self._task(n, pending, rdir)
