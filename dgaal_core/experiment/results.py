"""An experiment's results as typed records: one :class:`ResultRow` per round of a run, a run's
curve (:class:`RunResult`), and ``results.json`` (:class:`Results`); plus the experiment's own
note in each run's pool (:class:`RunMeta`, ``meta["experiment"]``).

Torch-free (numpy + h5py through the pool reader): ``dgaal report`` reads results on the base
install plus the ``report`` extra. A run's pool is the truth; ``results.json`` is rewritten from
the pools after every round.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dgaal_core.atomic import write_json
from dgaal_core.experiment.config import ExperimentError
from dgaal_core.loop.state import RoundRecord, pending_round, round_records
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State

RESULTS_FORMAT = "dgaal-experiment-results"
RESULTS_VERSION = 1
POOL_FORMAT = "pool"  # results made from one pool's round log (``dgaal report --pool``)
META_KEY = "experiment"  # the pool meta key of an experiment run's note


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class ResultRow:
    """One round of one run as the results hold it (round 0: T on the initial labelled set)."""

    round: int
    labelled: int
    labelled_ratio: float
    oracle_queries: int = 0
    oracle_queries_total: int = 0
    free_labels: int = 0
    generated_added: int = 0
    labelled_real: int | None = None
    accuracy: float | None = None
    test_loss: float | None = None
    per_class_accuracy: tuple[float | None, ...] | None = None
    picked_classes: tuple[int, ...] | None = None
    generated_share: float | None = None
    d1_auc: float | None = None
    generated_distance: float | None = None
    seconds: float = 0.0
    label_fidelity: float | None = None  # share of the round's x_g a reference T agrees with

    @classmethod
    def of(cls, record: RoundRecord) -> ResultRow:
        """The row of a finished round."""
        return cls(
            round=record.round,
            labelled=record.labelled or 0,
            labelled_ratio=record.labelled_ratio or 0.0,
            oracle_queries=record.oracle_queries or 0,
            oracle_queries_total=record.oracle_queries_total or 0,
            free_labels=record.free_labels or 0,
            generated_added=record.generated_added or 0,
            labelled_real=record.labelled_real,
            accuracy=record.accuracy,
            test_loss=record.test_loss,
            per_class_accuracy=record.per_class_accuracy,
            picked_classes=record.picked_classes,
            generated_share=record.generated_share,
            d1_auc=record.d1_auc,
            generated_distance=record.generated_distance,
            seconds=record.seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists; no ``label_fidelity`` key when it is unknown)."""
        out = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
        if out["label_fidelity"] is None:
            del out["label_fidelity"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Read a row written by any version (missing fields take their defaults)."""
        d = _known(cls, data)
        for name in ("per_class_accuracy", "picked_classes"):
            if d.get(name) is not None:
                d[name] = tuple(d[name])
        d["seconds"] = d.get("seconds") or 0.0
        return cls(**d)


@dataclass(frozen=True)
class RunMeta:
    """What an experiment notes in a run's pool: the settings it made the run with, round 0,
    and the label fidelity of each round's x_g."""

    strategy: str
    seed: int
    source: str
    schedule: dict[str, Any]
    round: dict[str, Any]  # the shared round settings (ExperimentConfig.shared_round_settings)
    selection: dict[str, float] | None = None  # absent in runs made before it was recorded
    round0: ResultRow | None = None
    fidelity: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "seed": self.seed,
            "source": self.source,
            "schedule": self.schedule,
            "round": self.round,
        }
        if self.selection is not None:
            out["selection"] = self.selection
        if self.round0 is not None:
            out["round0"] = self.round0.to_dict()
        if self.fidelity:
            out["fidelity"] = {str(k): v for k, v in self.fidelity.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMeta:
        """Read the note of any version."""
        round0 = data.get("round0")
        return cls(
            strategy=str(data.get("strategy", "")),
            seed=int(data.get("seed", 0)),
            source=str(data.get("source", "")),
            schedule=dict(data.get("schedule") or {}),
            round=dict(data.get("round") or {}),
            selection=data.get("selection"),
            round0=ResultRow.from_dict(round0) if round0 else None,
            fidelity={int(k): float(v) for k, v in (data.get("fidelity") or {}).items()},
        )


class _HasMeta(Protocol):
    meta: dict[str, Any]


def run_meta(reader: _HasMeta) -> RunMeta | None:
    """The experiment's note in a pool (None for a pool no experiment made)."""
    raw = reader.meta.get(META_KEY)
    return RunMeta.from_dict(raw) if raw else None


class _MetaWriter(Protocol):
    def update_meta(self, **values: Any) -> None: ...


def set_run_meta(writer: _MetaWriter, meta: RunMeta) -> None:
    """Stage the experiment's note in a pool writer."""
    writer.update_meta(**{META_KEY: meta.to_dict()})


@dataclass(frozen=True)
class RunResult:
    """One run's curve: its rows, oldest first."""

    strategy: str
    seed: int | None
    pool: str
    rows: tuple[ResultRow, ...]
    interrupted_round: int | None = None
    complete: bool | None = None  # whether the run reached the schedule's last target

    def to_dict(self) -> dict[str, Any]:
        out = {
            "strategy": self.strategy,
            "seed": self.seed,
            "pool": self.pool,
            "rounds": [r.to_dict() for r in self.rows],
            "interrupted_round": self.interrupted_round,
        }
        if self.complete is not None:
            out["complete"] = self.complete
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(
            strategy=str(data["strategy"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            pool=str(data.get("pool", "")),
            rows=tuple(ResultRow.from_dict(r) for r in data.get("rounds", [])),
            interrupted_round=data.get("interrupted_round"),
            complete=data.get("complete"),
        )


def run_results(pool_path: Path) -> RunResult:
    """One run's curve from its pool: round 0 (when the pool was made by an experiment) and
    every finished round. Works on any pool with a round log (``dgaal report --pool``)."""
    with PoolReader(pool_path) as r:
        meta = run_meta(r)
        records = round_records(r)
        pending = pending_round(r)
        # a pool's own log: round 0 is its initial labelled set (counted, never evaluated)
        initial = int(np.sum((r.fields["round"] == 0) & (r.states == State.LABELLED)))
        real = int(np.sum(r.fields["origin"] == Origin.REAL))
    rows = [ResultRow.of(x) for x in records]
    if meta is not None:
        rows = [dataclasses.replace(x, label_fidelity=meta.fidelity.get(x.round)) for x in rows]
        if meta.round0 is not None:
            rows.insert(0, meta.round0)
    elif rows and initial:
        rows.insert(0, ResultRow(0, initial, initial / max(1, real), labelled_real=initial))
    strategies = "+".join(dict.fromkeys(x.strategy for x in records)) or "none"
    first_seed = records[0].config.seed if records and records[0].config else None
    return RunResult(
        strategy=meta.strategy if meta and meta.strategy else strategies,
        seed=meta.seed if meta else first_seed,
        pool=str(pool_path),
        rows=tuple(rows),
        interrupted_round=None if pending is None else pending.round,
    )


@dataclass(frozen=True)
class Results:
    """``results.json`` of an experiment, or one pool's curve (``format`` "pool")."""

    source: str
    runs: tuple[RunResult, ...]
    config: dict[str, Any] | None = None  # ExperimentConfig.to_dict(); None for a pool
    real_images: int | None = None
    test_images: int | None = None
    num_classes: int | None = None
    targets: tuple[int, ...] = ()
    updated: str = ""
    format: str = RESULTS_FORMAT

    def strategies(self) -> list[str]:
        """The strategies that have runs, in their configured order."""
        configured = (self.config or {}).get("strategies") or []
        seen = [r.strategy for r in self.runs]
        return list(dict.fromkeys([*(s for s in configured if s in seen), *seen]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": RESULTS_VERSION,
            "source": self.source,
            "real_images": self.real_images,
            "test_images": self.test_images,
            "num_classes": self.num_classes,
            "config": self.config,
            "targets": list(self.targets),
            "updated": self.updated,
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        return cls(
            source=str(data.get("source", "")),
            runs=tuple(RunResult.from_dict(r) for r in data.get("runs", [])),
            config=data.get("config"),
            real_images=data.get("real_images"),
            test_images=data.get("test_images"),
            num_classes=data.get("num_classes"),
            targets=tuple(data.get("targets") or ()),
            updated=str(data.get("updated", "")),
            format=str(data.get("format", RESULTS_FORMAT)),
        )


def results_from_pool(pool: Path) -> Results:
    """Results holding one pool's curve (its round log, plus round 0 when the pool was made by
    an experiment)."""
    run = run_results(Path(pool))
    if not run.rows:
        raise ExperimentError(f"{pool}: no finished rounds to report on")
    return Results(source=str(pool), runs=(run,), format=POOL_FORMAT)


def load_results(path: Path) -> Results:
    """Read a ``results.json`` written by :class:`~dgaal_core.experiment.Experiment`."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ExperimentError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise ExperimentError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ExperimentError(f"{path}: not a dgaal experiment results file")
    try:
        return Results.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ExperimentError(f"{path}: a run does not parse ({e!r})") from None


def write_results(path: Path, results: Results) -> None:
    """Write ``results.json`` atomically."""
    write_json(path, results.to_dict())
