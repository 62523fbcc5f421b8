"""One active-learning round: Algorithm 2 of the paper around Algorithm 1, made crash-safe.

Phases of round n (work folder ``<pool>.dgaal/round-000n/``; each is a method of
:class:`~dgaal_core.loop.phases.RoundJob`):

1. ``train``: G, D1, D2 (Algorithm 1) in the first round; later rounds take the D1 (and G) that
   co-evolution left in round n-1, as the paper's Algorithm 2 does (``retrain_gan`` re-runs
   Algorithm 1 every round, warm-started: VAAL's way)                -> ``trained.pt``
2. ``serve``: the sampler and generator exported to ONNX (parity-checked)   -> ``*.onnx``
3. ``select``: the strategy picks N candidates (:mod:`dgaal_core.loop.strategies`); D1's
   scores come from onnxruntime, T's outputs from the previous round's T
4. ``label``: generated picks carry their parent's label (free); real ones are answered by the
   simulated oracle, or queried from a person (the round stops here: ``dgaal label`` resumes it)
   COMMIT A: picks -> labelled, pending round at phase ``selected``
5. ``coevolve``: D1 on (X_L, X_C) (Eq. 9)                           -> ``checkpoint.pt``
6. ``generate``: x_g = G(x_s) with onnxruntime, appended as candidates with y_s
   COMMIT B: new rows, phase ``generated``
7. ``finish``: T from scratch on the labelled set, evaluated on the test split
   COMMIT C: the round record; no pending round

A kill at any moment leaves the pool at one of these commits. The next ``dgaal round`` reads the
pending round (:mod:`dgaal_core.loop.state`) and redoes only what is missing, with the
interrupted round's own config: before A it reruns the round (same seed, same picks); after A it
redoes 5-7 from ``trained.pt`` (co-evolution is deterministic given the trainer's saved random
streams); after B it redoes 7. Labels are committed once and images appended once, because each
commit moves the phase on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.loop.config import RoundConfig, check_budget
from dgaal_core.loop.phases import Log, RoundJob
from dgaal_core.loop.serving import Embedder, Exporter
from dgaal_core.loop.state import PendingRound, Phase, RoundRecord, pending_round, work_folder
from dgaal_core.loop.strategies import Need
from dgaal_core.loop.workdir import QUERIES_DIR, round_dir, work_dir
from dgaal_core.model.training import resolve_device
from dgaal_core.pool.embeddings import open_embeddings
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolWriter
from dgaal_core.progress import Progress

# What a strategy may need on a pool without labels (a cold start): nothing trained on them
COLD_START_NEEDS = frozenset({Need.EMBEDDINGS})

# RoundConfig fields and the options that set them, where the two names differ
OPTION_OF = {"gan_epochs": "--epochs", "retrain_gan": "--retrain-gan"}


@dataclass(frozen=True)
class AwaitingLabels:
    """The round is waiting for a person's answers: what :meth:`Round.run` returns then, both
    when it has just written the query package (``new``) and when it is run again too early."""

    round: int
    queried: int  # rows still waiting for an answer
    queries: Path  # the query package's folder
    pool: Path
    new: bool

    @property
    def message(self) -> str:
        """What to do next, in one line."""
        if self.new:
            return (
                f"round {self.round}: {self.queried} images to label are in {self.queries}; "
                "fill in the 'label' column of queries.csv (or import label_studio_tasks.json "
                "into a Label Studio project made with label_config.xml and export it), then run "
                f"`dgaal label --pool {self.pool} ANSWERS` and `dgaal round` again"
            )
        return (
            f"round {self.round} is waiting for {self.queried} answers: fill in "
            f"{self.queries / 'queries.csv'} (or export the Label Studio project) "
            f"and run `dgaal label --pool {self.pool} ANSWERS`"
        )


def ignored_options(given: RoundConfig, stored: RoundConfig) -> list[str]:
    """The options a user set for a resumed round that its own config overrides: those that
    differ from both the stored value and the default (an unset option is not a choice)."""
    default = RoundConfig()
    out = []
    for name, value in given.to_dict().items():
        if value != getattr(stored, name) and value != getattr(default, name):
            option = OPTION_OF.get(name, "--" + name.replace("_", "-"))
            out.append(f"{option} {value}")
    return out


class Round:
    """Runs (or resumes) one round on a pool. See the module docstring for the phases.

    ``progress`` receives every long stage's progress (training steps, scoring);
    ``log`` one line per notable event.
    """

    def __init__(
        self,
        pool_path: Path,
        config: RoundConfig,
        exporter: Exporter,
        *,
        workdir: Path | None = None,
        progress: Progress | None = None,
        log: Log = print,
        embedder: Embedder | None = None,
    ):
        self.pool_path = Path(pool_path)
        self.embedder = embedder
        self.config = config
        self.exporter = exporter
        self.workdir = Path(workdir) if workdir is not None else work_dir(self.pool_path)
        self.progress = progress
        self.log = log
        self._recorded: Path | None = None  # the work folder the pool's last round ran in
        # the interrupted round this run finished (not one that waited for a person's answers):
        # the command then goes on with the round it was asked for
        self.finished_interrupted: int | None = None

    def run(self) -> RoundRecord | AwaitingLabels:
        """Run the next round, or finish an interrupted one; returns its record, or
        :class:`AwaitingLabels` when a person must answer first.

        Holds the pool's writer lock throughout, so a second round (or ``dgaal label``) on the
        same pool fails at once with a message naming this one.
        """
        if self.workdir.exists() and not self.workdir.is_dir():
            raise DgaalError(f"--workdir {self.workdir}: exists and is not a folder")
        with PoolWriter(self.pool_path, purpose="dgaal round") as w:
            with PoolReader(self.pool_path) as r:
                n = len(r.rounds()) + 1
                pending = pending_round(r)
                queried = int(np.sum(r.states == State.QUERIED))
                self._recorded = work_folder(r)
            if pending is not None and pending.round == n:
                job = self._resume(w, pending)
                if pending.oracle != "human":  # a person's answers finish a round, no more
                    self.finished_interrupted = n
                job.embed_new_rows()  # rows a killed round appended before embedding them
                if pending.phase is Phase.AWAITING_LABELS or queried:
                    return self._awaiting(n, queried, new=False)
            else:
                with PoolReader(self.pool_path) as r:
                    config = self._cold_start(r, n)
                config = self._d1_input(config)
                pending, job = None, self._job(w, n, config)
                with PoolReader(self.pool_path) as r:  # bad settings: refused before any write
                    r.check_shards()  # a missing test shard would otherwise surface at the end
                    check_budget(config, r)
                    run = job.run_config(r)  # with require_embeddings: T, strategy or D1
                job.embed_new_rows()
                resolve_device(run.train.device)  # --device cuda without a GPU
                job.rdir.mkdir(parents=True, exist_ok=True)
                with PoolReader(self.pool_path) as r:
                    trainer = job.train(r)
                    picked, context = job.select(r, trainer)
                    pending = job.label(r, picked, context)
                if pending.phase is Phase.AWAITING_LABELS:
                    return self._awaiting(n, len(pending.queried or ()), new=True)
            if pending.phase is Phase.SELECTED:
                job.coevolve()
                pending = job.generate(pending)
            return job.finish(pending)

    def _cold_start(self, reader: PoolReader, n: int) -> RoundConfig:
        """The config of round ``n``: the one asked for, or, on a pool without a single label
        and a strategy that needs them (T, D1), a cold start that needs none: TypiClust on the
        pool's embeddings when it has them, else random. Said in one line; the asked-for
        strategy takes over from the next round."""
        config = self.config
        needs = config.strategy_object.needs(config.selection())
        if np.any(reader.states == State.LABELLED) or needs <= COLD_START_NEEDS:
            return config
        cold = "typiclust" if open_embeddings(self.pool_path) is not None else "random"
        how = "by typicality on the pool's embeddings" if cold == "typiclust" else "at random"
        hint = "" if cold == "typiclust" else " (`dgaal pool embed` first to pick by typicality)"
        self.log(
            f"{self.pool_path} has no labels yet: round {n} picks its images {how}{hint}, "
            f"trains nothing, and strategy '{config.strategy}' takes over once they are labelled"
        )
        return dataclasses.replace(
            config, strategy=cold, shortlist=None, task_weight=None, generated_cap=None,
            retrain_gan=None,
        )  # fmt: skip

    def _d1_input(self, config: RoundConfig) -> RoundConfig:
        """``--d1-input auto`` made concrete for this pool (one line when it picks embeddings)."""
        resolved = config.with_d1_input(open_embeddings(self.pool_path) is not None)
        if config.d1_input == "auto" and resolved.d1_input == "embedding":
            if Need.GAN in resolved.strategy_object.needs(resolved.selection()):
                self.log(
                    f"D1 reads {self.pool_path}'s embeddings (--d1-input auto; "
                    "--d1-input image for the paper's D1 on G1's latent)"
                )
        return resolved

    def _job(self, writer: PoolWriter, n: int, config: RoundConfig) -> RoundJob:
        return RoundJob(
            self.pool_path, n, config, self.exporter, writer, self.workdir,
            recorded=self._recorded, progress=self.progress, log=self.log, embedder=self.embedder,
        )  # fmt: skip

    def _resume(self, writer: PoolWriter, pending: PendingRound) -> RoundJob:
        """A job that finishes ``pending`` with its own config (saying which options are not
        used now: they apply to the next round)."""
        config = pending.require_config()
        job = self._job(writer, pending.round, config)
        job.timings = dict(pending.timings)
        if pending.phase is not Phase.AWAITING_LABELS:
            ignored = ignored_options(self.config, config)
            after = "the round after it" if pending.oracle == "human" else "the round started next"
            note = (
                f"; with its own settings, not {', '.join(ignored)} (they apply to {after})"
                if ignored
                else ""
            )
            self.log(f"resuming round {pending.round} after phase '{pending.phase.value}'{note}")
        return job

    def _awaiting(self, n: int, queried: int, *, new: bool) -> AwaitingLabels:
        queries = round_dir(self.workdir, n) / QUERIES_DIR
        return AwaitingLabels(n, queried, queries, self.pool_path, new)
