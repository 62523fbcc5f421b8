"""Active-learning experiments: every strategy x seed on its own copy of a pool, round after
round, until the labelled set reaches a target size (the paper's protocol, section 4.2).

Layout of an experiment folder ``DIR``::

    DIR/results.json                    every run's curve (rewritten after each round)
    DIR/runs/<strategy>-seed<k>/pools.h5  the run's own pool; its round log is the truth
    DIR/runs/<strategy>-seed<k>/pools.dgaal/  checkpoints and ONNX files of its rounds
    DIR/reference_task.pt               the T that judges x_g's labels (label fidelity)

A run's pool is a fresh copy of the source pool's *real* rows (earlier rounds, labels and
generated rows dropped) with a new initial labelled set drawn by
:func:`~dgaal_core.loop.selection.choose_initial` from the seed alone, so every strategy of a
seed starts from the same labelled images. Round 0 (T trained on the initial set, before any
selection) is evaluated once and kept in the pool's note (:class:`~.results.RunMeta`).

Resuming: a killed experiment is simply started again. Finished rounds are read from each run's
pool, an interrupted round is finished by :class:`~dgaal_core.loop.round.Round` itself, and the
next round's budget is whatever brings the labelled count to the next target.

Schedule sizes are fractions (< 1) of the pool's real images or counts (>= 1), as in
``dgaal pool create --initial`` and ``dgaal round --budget``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import EmptyPoolError
from dgaal_core.experiment.config import ExperimentConfig, ExperimentError
from dgaal_core.experiment.evaluation import initial_row, label_fidelity, reference_task
from dgaal_core.experiment.results import (
    ResultRow,
    Results,
    RunMeta,
    RunResult,
    run_meta,
    run_results,
    set_run_meta,
    write_results,
)
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.round import Round
from dgaal_core.loop.selection import choose_initial
from dgaal_core.loop.serving import Embedder, Exporter
from dgaal_core.loop.state import RoundRecord, pending_round
from dgaal_core.loop.workdir import work_dir
from dgaal_core.pool.embeddings import open_embeddings, write_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State
from dgaal_core.pool.writer import PoolBuilder, PoolWriter
from dgaal_core.progress import Progress
from dgaal_core.values import derive_seed

Log = Callable[[str], None]


def _copy_embeddings(source: Path, rows: np.ndarray, target: Path, pool_id: str) -> bool:
    """Give the pool at ``target`` (id ``pool_id``) the embeddings of ``source``'s pool rows
    ``rows`` (in that order) and of all its test rows, with the same encoder and no encoder run;
    False when ``source`` has none. The caller holds ``target``'s writer lock."""
    emb = open_embeddings(Path(source))
    if emb is None:
        return False
    rows = np.asarray(rows, dtype=np.int64)

    def embed(split: str, lo: int, hi: int) -> Iterator[np.ndarray]:
        yield emb.pool(rows[lo:hi]) if split == "pool" else emb.test()[lo:hi]

    entry = {k: v for k, v in emb.manifest.encoder.items() if k not in ("file", "sha256")}
    counts = {"pool": int(rows.size), "test": emb.rows("test")}
    write_embeddings(target, pool_id, counts, embed, encoder=entry, encoder_file=emb.encoder_path)
    return True


def run_name(strategy: str, seed: int) -> str:
    """Folder name of one run: ``<strategy>-seed<k>``."""
    return f"{strategy}-seed{seed}"


class Experiment:
    """Runs (or resumes) every strategy x seed of ``config`` on copies of ``source``.

    ``exporter`` serves the sampler and generator to each round (the CLI passes
    ``export.round_backend.onnx_exporter``) and ``embedder`` embeds the rows a round adds
    (``export.embed.round_embedder``). ``log`` receives one line per finished round,
    ``round_log`` the rounds' own lines, ``progress`` every long stage's progress.
    """

    def __init__(
        self,
        source: Path,
        out_dir: Path,
        config: ExperimentConfig,
        exporter: Exporter,
        *,
        progress: Progress | None = None,
        log: Log = print,
        round_log: Log | None = None,
        embedder: Embedder | None = None,
    ):
        self.source = Path(source)
        self.embedder = embedder  # rounds embed the rows they add (x_g), as `dgaal round` does
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
    def _run_meta(self, strategy: str, seed: int) -> RunMeta:
        return RunMeta(
            strategy=strategy,
            seed=seed,
            source=str(self.source),
            schedule=self.config.schedule.to_dict(),
            round=self.config.shared_round_settings(),
            # resolved, so that a changed strategy default is caught on resume
            selection=self.config.round_config(strategy, seed, 1).selection().to_dict(),
        )

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
                labelled = choose_initial(truth, self.targets[0], rng, stratified=True)
                meta = {"experiment": self._run_meta(strategy, seed).to_dict()}
                b.finish(labelled=labelled, meta=meta)
        with PoolWriter(path, purpose="dgaal experiment") as w:  # the source's embeddings, if any
            _copy_embeddings(self.source, ids, path, w.index.pool_id)

    def _check_settings(self, path: Path, meta: RunMeta, strategy: str, seed: int) -> None:
        want = self._run_meta(strategy, seed)
        pairs = [(k, meta.schedule.get(k), want.schedule[k]) for k in ("initial", "step")]
        pairs += [("strategy", meta.strategy, want.strategy), ("seed", meta.seed, want.seed)]
        default = RoundConfig().to_dict()  # a field newer than the run: it had the default
        pairs += [(k, meta.round.get(k, default.get(k)), v) for k, v in want.round.items()]
        if meta.selection is not None:  # runs made before it was recorded cannot be checked
            pairs.append(("selection", meta.selection, want.selection))
        clash = [f"{k} {have} there, {asked} asked" for k, have, asked in pairs if have != asked]
        if clash:
            raise ExperimentError(
                f"{path} was made with other settings ({'; '.join(clash)}); "
                "use another --out, or delete that run to redo it"
            )

    def _prepare(self, strategy: str, seed: int) -> Path:
        """The run's pool, made if missing, settings checked, round 0 evaluated."""
        path = self.pool_path(strategy, seed)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._make_pool(path, strategy, seed)
        with PoolReader(path) as r:
            meta = run_meta(r)
        if meta is None:
            raise ExperimentError(f"{path} is not an experiment run's pool; delete it or use --out")
        self._check_settings(path, meta, strategy, seed)
        if meta.round0 is None:
            cfg = self.config.round_config("random", seed, 1)
            row = initial_row(path, cfg, seed, self.real, self.progress)
            with PoolWriter(path, purpose="dgaal experiment") as w:
                set_run_meta(w, dataclasses.replace(meta, round0=row))
                w.commit()
            self._report(strategy, seed, row)
        return path

    # ---- label fidelity of x_g --------------------------------------------------------------
    def reference_task(self) -> Any:
        """T trained on the ground truth of all the source's real training images (cached in
        ``DIR/reference_task.pt``): the judge of generated images' inherited labels."""
        if self._reference is None:
            self._reference = reference_task(
                self.source,
                self.config.round_config("random", 0, 1),
                self.out_dir / "reference_task.pt",
                progress=self.progress,
                log=self.log,
            )
        return self._reference

    def _record_fidelity(self, path: Path, record: RoundRecord) -> None:
        """Share of the round's x_g whose class the reference T agrees with their inherited
        label; stored in the run's note."""
        if not record.generated_ids:
            return
        agree = label_fidelity(self.reference_task(), path, record.generated_ids)
        with PoolWriter(path, purpose="dgaal experiment") as w, PoolReader(path) as r:
            meta = run_meta(r)
            assert meta is not None, "a run's pool always carries its note"
            fidelity = {**meta.fidelity, record.round: agree}
            set_run_meta(w, dataclasses.replace(meta, fidelity=fidelity))
            w.commit()

    # ---- the loop --------------------------------------------------------------------------
    def _report(self, strategy: str, seed: int, row: ResultRow) -> None:
        acc = row.accuracy
        n = len(self.targets) - 1
        self.log(
            f"{self._position}{run_name(strategy, seed)} round {row.round}/{n}: "
            f"labelled {row.labelled} ({100 * row.labelled_ratio:.1f}%), "
            f"queries {row.oracle_queries} (total {row.oracle_queries_total}), "
            f"free {row.free_labels}, "
            f"accuracy {'n/a' if acc is None else f'{100 * acc:.2f}%'} "
            f"[{row.seconds:.1f} s]"
        )

    def run_one(self, strategy: str, seed: int) -> RunResult:
        """Run (or finish) one strategy x seed; returns its curve."""
        path = self._prepare(strategy, seed)
        while True:
            with PoolReader(path) as r:
                pending = pending_round(r)
                labelled = int(np.sum(r.states == State.LABELLED))
                done = len(r.rounds())
            if pending is not None:
                self.log(f"{run_name(strategy, seed)}: finishing interrupted round {done + 1}")
                cfg = self.config.round_config(strategy, seed, 1)  # Round uses the pending one
            else:
                later = [t for t in self.targets if t > labelled]
                if not later:
                    break
                cfg = self.config.round_config(strategy, seed, later[0] - labelled)
            round_ = Round(
                path, cfg, self.exporter, progress=self.progress, log=self.round_log,
                embedder=self.embedder,
            )  # fmt: skip
            try:
                record = round_.run()
            except EmptyPoolError as e:
                self.log(f"{run_name(strategy, seed)}: stopping early: {e}")
                break
            if not isinstance(record, RoundRecord):  # the simulated oracle never waits
                raise ExperimentError(f"{path}: {record.message}")
            if self.config.label_fidelity:
                self._record_fidelity(path, record)
            self._report(strategy, seed, ResultRow.of(record))
            self.write_results()
        return run_results(path)

    def run(self) -> Results:
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

    def results(self) -> Results:
        """The experiment's results as they stand, read from the run pools."""
        runs = []
        for seed in self.config.seeds:
            for strategy in self.config.strategies:
                path = self.pool_path(strategy, seed)
                if not path.exists():
                    continue
                run = run_results(path)
                complete = bool(run.rows) and run.rows[-1].labelled >= self.targets[-1]
                rel = str(path.relative_to(self.out_dir))
                runs.append(dataclasses.replace(run, pool=rel, complete=complete))
        return Results(
            source=str(self.source),
            runs=tuple(runs),
            config=self.config.to_dict(),
            real_images=self.real,
            test_images=self.num_test,
            num_classes=self.num_classes,
            targets=tuple(self.targets),
            updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )

    def write_results(self) -> Results:
        """Write ``results.json`` atomically; returns what was written."""
        data = self.results()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_results(self.results_path, data)
        return data
