"""Active-learning experiments: every strategy x seed on its own copy of a pool, round after
round, until the labelled set reaches a target size (the paper's protocol, section 4.2).

Layout of an experiment folder ``DIR``::

    DIR/results.json                    every run's curve (rewritten after each round)
    DIR/runs/<strategy>-seed<k>/pools.h5  the run's own pool; its round log is the truth
    DIR/runs/<strategy>-seed<k>/pools.dgaal/  checkpoints and ONNX files of its rounds

A run's pool is a fresh copy of the source pool's *real* rows (earlier rounds, labels and
generated rows dropped) with a new initial labelled set drawn by
:func:`~dgaal_core.loop.selection.choose_initial` from the seed alone, so every strategy of a seed
starts from the same labelled images. Round 0 (T trained on the initial set, before any
selection) is evaluated once and kept in the pool's ``meta["experiment"]``.

Resuming: a killed experiment is simply started again. Finished rounds are read from each run's
pool, an interrupted round is finished by :class:`~dgaal_core.round.Round` itself, and the next
round's budget is whatever brings the labelled count to the next target.

Schedule sizes are fractions (< 1) of the pool's real images or counts (>= 1), as in
``dgaal pool create --initial`` and ``dgaal round --budget``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import EmptyPoolError
from dgaal_core.experiment.config import (
    PAPER_STRATEGIES,
    ExperimentConfig,
    ExperimentError,
    Schedule,
    parse_list,
)
from dgaal_core.loop.parts import Exporter, PoolSource
from dgaal_core.loop.round import Round, work_dir
from dgaal_core.loop.selection import choose_initial
from dgaal_core.model.data import ArraySource
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.task import evaluate_task, train_task
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.pool.writer import PoolBuilder, PoolWriter
from dgaal_core.values import derive_seed

__all__ = [
    "PAPER_STRATEGIES",
    "Experiment",
    "ExperimentConfig",
    "ExperimentError",
    "Schedule",
    "load_results",
    "parse_list",
    "run_results",
]

Log = Callable[[str], None]
RESULTS_FORMAT = "dgaal-experiment-results"
RESULTS_VERSION = 1
# keys of a round record copied into the results
_RECORD_KEYS = (
    "round",
    "labelled",
    "labelled_real",
    "labelled_ratio",
    "oracle_queries",
    "oracle_queries_total",
    "free_labels",
    "generated_added",
    "accuracy",
    "test_loss",
    "per_class_accuracy",
    "picked_classes",
    "generated_share",
    "d1_auc",
    "generated_distance",
)


def run_name(strategy: str, seed: int) -> str:
    """Folder name of one run: ``<strategy>-seed<k>``."""
    return f"{strategy}-seed{seed}"


def _record_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in _RECORD_KEYS}
    row["seconds"] = round(sum(record.get("timings", {}).values()), 3)
    return row


def run_results(pool_path: Path) -> dict[str, Any]:
    """One run's curve from its pool: round 0 (when the pool was made by an experiment) and
    every finished round. Works on any pool with a round log (``dgaal report --pool``)."""
    with PoolReader(pool_path) as r:
        meta = r.meta.get("experiment") or {}
        rounds = r.rounds()
        pending = r.meta.get("pending_round")
    strategies = list(dict.fromkeys(str(x["strategy"]) for x in rounds))
    rows = ([meta["round0"]] if meta.get("round0") else []) + [_record_row(x) for x in rounds]
    fidelity = meta.get("fidelity") or {}
    for row in rows:
        if str(row["round"]) in fidelity:
            row["label_fidelity"] = fidelity[str(row["round"])]
    return {
        "strategy": meta.get("strategy") or "+".join(strategies) or "none",
        "seed": meta.get("seed", rounds[0]["config"]["seed"] if rounds else None),
        "pool": str(pool_path),
        "rounds": rows,
        "interrupted_round": None if not pending else pending.get("round"),
    }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class Experiment:
    """Runs (or resumes) every strategy x seed of ``config`` on copies of ``source``.

    ``exporter`` serves the sampler and generator to each round (the CLI passes
    ``export.round_backend.onnx_exporter``). ``log`` receives one line per finished round.
    """

    def __init__(
        self,
        source: Path,
        out_dir: Path,
        config: ExperimentConfig,
        exporter: Exporter,
        *,
        progress: bool = False,
        log: Log = print,
        round_log: Log | None = None,
    ):
        self.source = Path(source)
        self.out_dir = Path(out_dir)
        self.config = config
        self.exporter = exporter
        self.progress = progress
        self.log = log
        self.round_log = round_log or (lambda _msg: None)
        with PoolReader(self.source) as r:
            if not r.has_truth:
                raise ExperimentError(
                    f"{self.source}: no ground truth (made with --no-truth); an experiment "
                    "simulates the oracle and needs it"
                )
            if r.num_test == 0:
                raise ExperimentError(
                    f"{self.source}: no test split, so accuracy cannot be measured"
                )
            real = (r.fields["origin"] == Origin.REAL) & (r.states != State.EXCLUDED)
            self.real = int(np.sum(real))
            self.num_test = r.num_test
            self.num_classes = r.num_classes
        self.targets = config.schedule.targets(self.real)
        self._position = ""  # "[run i/n] " while run() loops
        self._reference: Any = None  # T trained on the source's whole ground truth

    # ---- paths -----------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        """``DIR/results.json``."""
        return self.out_dir / "results.json"

    def pool_path(self, strategy: str, seed: int) -> Path:
        """``DIR/runs/<strategy>-seed<k>/pools.h5``."""
        return self.out_dir / "runs" / run_name(strategy, seed) / "pools.h5"

    # ---- one run's pool --------------------------------------------------------------------
    def _run_meta(self, strategy: str, seed: int) -> dict[str, Any]:
        return {
            "strategy": strategy,
            "seed": seed,
            "source": str(self.source),
            "schedule": self.config.schedule.to_dict(),
            "round": self.config.shared_round_settings(),
            # resolved, so that a changed strategy default is caught on resume
            "selection": self.config.round_config(strategy, seed, 1).selection(),
        }

    def _make_pool(self, path: Path, strategy: str, seed: int) -> None:
        """A fresh copy of the source's real rows (excluded ones left out) and test split, with
        a new initial set."""
        shutil.rmtree(work_dir(path), ignore_errors=True)  # stale checkpoints of a deleted pool
        with PoolReader(self.source) as src:
            real = src.fields["origin"] == Origin.REAL
            ids = np.flatnonzero(real & (src.states != State.EXCLUDED)).astype(np.int64)
            truth = src.read_truth(ids)
            with PoolBuilder(path, src.image_shape, src.class_names, force=True) as b:
                for batch_ids, images in src.iter_batches(ids, batch_size=4096):
                    pos = np.searchsorted(ids, batch_ids)
                    b.add(images, truth=truth[pos])
                for lo in range(0, src.num_test, 4096):
                    b.add_test(*src.read_test(lo, lo + 4096))
                rng = np.random.default_rng(derive_seed(seed, "initial"))
                meta = {"experiment": self._run_meta(strategy, seed)}
                labelled = choose_initial(truth, self.targets[0], rng, stratified=True)
                b.finish(labelled=labelled, meta=meta)

    def _check_settings(self, path: Path, meta: dict[str, Any], strategy: str, seed: int) -> None:
        want = self._run_meta(strategy, seed)
        pairs = [
            (k, meta.get("schedule", {}).get(k), want["schedule"][k]) for k in ("initial", "step")
        ]
        pairs += [(k, meta.get(k), want[k]) for k in ("strategy", "seed")]
        pairs += [(k, meta.get("round", {}).get(k), v) for k, v in want["round"].items()]
        if "selection" in meta:  # runs made before it was recorded cannot be checked
            pairs.append(("selection", meta["selection"], want["selection"]))
        clash = [f"{k} {have} there, {asked} asked" for k, have, asked in pairs if have != asked]
        if clash:
            raise ExperimentError(
                f"{path} was made with other settings ({'; '.join(clash)}); "
                "use another --out, or delete that run to redo it"
            )

    def _evaluate_initial(self, path: Path, seed: int) -> dict[str, Any]:
        """Round 0: T trained on the initial labelled set, as the round trains it."""
        t0 = time.perf_counter()
        with PoolReader(path) as r:
            cfg = self.config.round_config("random", seed, 1)
            run = cfg.run_config(r.image_shape, r.num_classes)
            ids = r.ids(State.LABELLED)
            task = build_task_model(run.model, derive_seed(run.train.seed, "task", 0))
            rng = np.random.default_rng(derive_seed(seed, "task", 0))
            source = PoolSource(r, ids, r.labels[ids])
            train_task(task, source, run.train, rng, progress=self.progress)
            test_x, test_y = r.read_test()
            metrics = evaluate_task(
                task, ArraySource(test_x, test_y.astype(np.int64)), r.num_classes,
                device=run.train.device,
            )  # fmt: skip
        return {
            "round": 0,
            "labelled": int(ids.size),
            "labelled_real": int(ids.size),
            "labelled_ratio": ids.size / self.real,
            "oracle_queries": 0,
            "oracle_queries_total": 0,
            "free_labels": 0,
            "generated_added": 0,
            "accuracy": metrics.accuracy,
            "test_loss": metrics.mean_loss,
            "per_class_accuracy": metrics.to_dict()["per_class_accuracy"],
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def _prepare(self, strategy: str, seed: int) -> Path:
        """The run's pool, made if missing, settings checked, round 0 evaluated."""
        path = self.pool_path(strategy, seed)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._make_pool(path, strategy, seed)
        with PoolReader(path) as r:
            meta = dict(r.meta.get("experiment") or {})
        if not meta:
            raise ExperimentError(f"{path} is not an experiment run's pool; delete it or use --out")
        self._check_settings(path, meta, strategy, seed)
        if not meta.get("round0"):
            meta["round0"] = self._evaluate_initial(path, seed)
            with PoolWriter(path, purpose="dgaal experiment") as w:
                w.update_meta(experiment=meta)
                w.commit()
            self._report(strategy, seed, meta["round0"])
        return path

    # ---- label fidelity of x_g --------------------------------------------------------------
    def reference_task(self) -> Any:
        """T trained on the ground truth of all the source's real training images (cached in
        ``DIR/reference_task.pt``): the judge of generated images' inherited labels."""
        if self._reference is not None:
            return self._reference
        import torch

        with PoolReader(self.source) as r:
            run = self.config.round_config("random", 0, 1).run_config(r.image_shape, r.num_classes)
            task = build_task_model(run.model, derive_seed(0, "reference-task"))
            path = self.out_dir / "reference_task.pt"
            if path.exists():
                task.load_state_dict(torch.load(path, weights_only=True))
            else:
                ids = r.ids(origin=Origin.REAL)
                ids = ids[r.states[ids] != State.EXCLUDED]
                source = ArraySource(r.read_images(ids), r.read_truth(ids).astype(np.int64))
                rng = np.random.default_rng(derive_seed(0, "reference-task", "batches"))
                self.log(f"training the reference T on {ids.size} images (label fidelity)")
                train_task(task, source, run.train, rng, progress=self.progress)
                self.out_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
                torch.save(task.state_dict(), tmp)
                os.replace(tmp, path)
        self._reference = task
        return task

    def _record_fidelity(self, path: Path, record: dict[str, Any]) -> None:
        """Share of the round's x_g whose class the reference T agrees with their inherited
        label; stored in the run's ``meta["experiment"]["fidelity"]``."""
        span = record.get("generated_ids")
        if not span:
            return
        from dgaal_core.loop.parts import task_outputs

        ids = np.arange(span[0], span[1], dtype=np.int64)
        with PoolReader(path) as r:
            probs, _ = task_outputs(self.reference_task(), r, ids, device="cpu")
            agree = float(np.mean(probs.argmax(1) == r.labels[ids]))
            meta = dict(r.meta.get("experiment") or {})
        meta["fidelity"] = {**(meta.get("fidelity") or {}), str(record["round"]): agree}
        with PoolWriter(path, purpose="dgaal experiment") as w:
            w.update_meta(experiment=meta)
            w.commit()

    # ---- the loop --------------------------------------------------------------------------
    def _report(self, strategy: str, seed: int, row: dict[str, Any]) -> None:
        acc = row["accuracy"]
        n = len(self.targets) - 1
        self.log(
            f"{self._position}{run_name(strategy, seed)} round {row['round']}/{n}: "
            f"labelled {row['labelled']} ({100 * row['labelled_ratio']:.1f}%), "
            f"queries {row['oracle_queries']} (total {row['oracle_queries_total']}), "
            f"free {row['free_labels']}, "
            f"accuracy {'n/a' if acc is None else f'{100 * acc:.2f}%'} "
            f"[{row.get('seconds', 0):.1f} s]"
        )

    def run_one(self, strategy: str, seed: int) -> dict[str, Any]:
        """Run (or finish) one strategy x seed; returns its curve (see :func:`run_results`)."""
        path = self._prepare(strategy, seed)
        while True:
            with PoolReader(path) as r:
                pending = r.meta.get("pending_round")
                labelled = int(np.sum(r.states == State.LABELLED))
                done = len(r.rounds())
            if pending:
                self.log(f"{run_name(strategy, seed)}: finishing interrupted round {done + 1}")
                cfg = self.config.round_config(strategy, seed, 1)  # Round uses the pending one
            else:
                later = [t for t in self.targets if t > labelled]
                if not later:
                    break
                cfg = self.config.round_config(strategy, seed, later[0] - labelled)
            round_ = Round(path, cfg, self.exporter, progress=self.progress, log=self.round_log)
            try:
                record = round_.run()
            except EmptyPoolError as e:
                self.log(f"{run_name(strategy, seed)}: stopping early: {e}")
                break
            if self.config.label_fidelity:
                self._record_fidelity(path, record)
            self._report(strategy, seed, _record_row(record))
            self.write_results()
        return run_results(path)

    def run(self) -> dict[str, Any]:
        """Every seed x strategy (seed-major, so early results already compare strategies);
        returns the results (also in ``results.json``)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        runs = [(st, seed) for seed in self.config.seeds for st in self.config.strategies]
        try:
            for i, (strategy, seed) in enumerate(runs, 1):
                self._position = f"[run {i}/{len(runs)}] "
                self.run_one(strategy, seed)
                self.write_results()
        finally:
            self._position = ""
        return self.write_results()

    def results(self) -> dict[str, Any]:
        """The experiment's results as they stand, read from the run pools."""
        runs = []
        for seed in self.config.seeds:
            for strategy in self.config.strategies:
                path = self.pool_path(strategy, seed)
                if not path.exists():
                    continue
                run = run_results(path)
                run["pool"] = str(path.relative_to(self.out_dir))
                run["complete"] = (
                    bool(run["rounds"]) and run["rounds"][-1]["labelled"] >= self.targets[-1]
                )
                runs.append(run)
        return {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "source": str(self.source),
            "real_images": self.real,
            "test_images": self.num_test,
            "num_classes": self.num_classes,
            "config": self.config.to_dict(),
            "targets": self.targets,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "runs": runs,
        }

    def write_results(self) -> dict[str, Any]:
        """Write ``results.json`` atomically; returns what was written."""
        data = self.results()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.results_path, data)
        return data


def load_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` written by :class:`Experiment`."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ExperimentError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise ExperimentError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ExperimentError(f"{path}: not a dgaal experiment results file")
    return data


def strategies_of(results: dict[str, Any]) -> Sequence[str]:
    """The strategies that have runs in ``results``, in their configured order."""
    configured = (results.get("config") or {}).get("strategies") or []
    seen = [r["strategy"] for r in results["runs"]]
    return list(dict.fromkeys([*(s for s in configured if s in seen), *seen]))
