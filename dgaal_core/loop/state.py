"""The round's state as the pool stores it: the pending round (``meta.pending_round``) and the
round log (``log/rounds``), as typed, frozen, versioned records.

This is the only module that knows their field names. Everything else (the round, the oracle,
abandon, ``pool check``, experiments, reports, the command line) reads and writes them through
:class:`PendingRound`, :class:`RoundRecord`, :func:`pending_round`, :func:`round_records` and
:func:`set_pending`.

Versions: records written before they were versioned carry no ``version`` and are version 1;
this dgaal writes version 1 explicitly. Version 1 grew fields over time (``queried``,
``labelled_real``, ``picked_classes``, ``generated_share``, ``d1_auc``, ``generated_distance``,
``generated_ids``, ``selection``); a record without one reads it as None (``queried``: the real
picks were the ones asked, as those versions did). A record of a newer version is an error, not
a guess. Phases of a pending round::

    awaiting_labels  its picks are committed as queried (and free ones as labelled); a person
                     answers with ``dgaal label``, which moves it to ``selected``
    selected         COMMIT A: every pick is labelled
    generated        COMMIT B: x_g = G(x_s) appended; only T is left (COMMIT C clears it)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from dgaal_core.errors import ConfigError, DgaalError
from dgaal_core.loop.config import RoundConfig
from dgaal_core.pool.schema import Origin

VERSION = 1
PENDING_KEY = "pending_round"  # the pool meta key of the pending round
WORKDIR_KEY = "workdir"  # the absolute work folder the last round ran in


class RecordError(DgaalError):
    """A stored round record or pending round does not parse (names the field)."""


class Phase(str, enum.Enum):
    """How far a pending round got (see the module docstring)."""

    AWAITING_LABELS = "awaiting_labels"
    SELECTED = "selected"
    GENERATED = "generated"


PHASES = tuple(p.value for p in Phase)

_T = TypeVar("_T")


def _field(data: dict[str, Any], name: str, parse: Callable[[Any], _T], where: str) -> _T:
    try:
        return parse(data[name])
    except KeyError:
        raise RecordError(f"{where}: no '{name}'") from None
    except (ValueError, TypeError, ConfigError) as e:
        raise RecordError(f"{where}: '{name}' does not parse ({e})") from None


def _optional(data: dict[str, Any], name: str, parse: Callable[[Any], _T], where: str) -> _T | None:
    if data.get(name) is None:
        return None
    return _field(data, name, parse, where)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("expected a list of ids")
    return tuple(_int(v) for v in value)


def _span(value: Any) -> tuple[int, int]:
    lo, hi = _ids(value)
    return lo, hi


def _timings(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError("expected an object of seconds by phase")
    return {str(k): _float(v) for k, v in value.items()}


def _config(value: Any) -> RoundConfig:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return RoundConfig.from_dict(value)


def _version(data: dict[str, Any], where: str) -> None:
    version = _optional(data, "version", _int, where) or 1
    if version > VERSION:
        raise RecordError(f"{where}: version {version}, this dgaal reads up to {VERSION}")


def _check_dict(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"{where} is not an object")
    return data


def _plain(value: Any) -> Any:
    """JSON-able form of a field value (tuples as lists, enums as their values)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, RoundConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class PendingRound:
    """A round that committed something and is not finished (``meta.pending_round``)."""

    round: int
    phase: Phase
    selected: tuple[int, ...]  # every pick, ascending
    queried: tuple[int, ...] | None = None  # the picks a person or the simulated oracle answers
    config: RoundConfig | None = None  # None only in hand-made records: cannot be resumed
    oracle: str = "simulated"  # who answers: "simulated" or "human"
    oracle_queries: int = 0
    free_labels: int = 0  # generated picks: they carry their parent's label
    timings: dict[str, float] = field(default_factory=dict)
    d1_auc: float | None = None  # D1's ROC AUC, labelled vs candidates, when D1 selected
    queries: dict[str, str] | None = None  # the query package's files (human oracle)
    generated_added: int = 0
    generated_distance: float | None = None  # mean |x_g - x_s| in 0..1 pixel units
    generated_ids: tuple[int, int] | None = None  # [first, end) of the new x_g rows

    def asked(self, origin: np.ndarray) -> np.ndarray:
        """The picks that had to be answered (``queried``; for records made before it was
        stored: the real picks, as those versions asked them)."""
        if self.queried is not None:
            return np.asarray(self.queried, dtype=np.int64)
        picked = np.asarray(self.selected, dtype=np.int64)
        return picked[origin[picked] == Origin.REAL]

    def require_config(self) -> RoundConfig:
        """The round's own config; a record without one cannot be resumed."""
        if self.config is None:
            raise RecordError(
                f"pending round {self.round} has no config and cannot be resumed; "
                "abandon it with `dgaal round --abandon`"
            )
        return self.config

    def moved(self, phase: Phase, **changes: Any) -> PendingRound:
        """This pending round at ``phase`` with ``changes``."""
        return dataclasses.replace(self, phase=phase, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON-able), version included."""
        out = {"version": VERSION}
        out |= {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PendingRound:
        """Parse a stored pending round of any version (see the module docstring)."""
        where = "pending round"
        d = _check_dict(data, where)
        _version(d, where)
        phase = d.get("phase")
        if phase not in PHASES:
            raise RecordError(
                f"{where} {d.get('round')} (phase {phase!r}): unknown phase, expected one of "
                f"{', '.join(PHASES)}"
            )
        queries = d.get("queries")
        return cls(
            round=_field(d, "round", _int, where),
            phase=Phase(phase),
            selected=_field(d, "selected", _ids, where),
            queried=_optional(d, "queried", _ids, where),
            config=_optional(d, "config", _config, where),
            oracle=str(d.get("oracle", "simulated")),
            oracle_queries=_optional(d, "oracle_queries", _int, where) or 0,
            free_labels=_optional(d, "free_labels", _int, where) or 0,
            timings=_optional(d, "timings", _timings, where) or {},
            d1_auc=_optional(d, "d1_auc", _float, where),
            queries={str(k): str(v) for k, v in queries.items()}
            if isinstance(queries, dict)
            else None,
            generated_added=_optional(d, "generated_added", _int, where) or 0,
            generated_distance=_optional(d, "generated_distance", _float, where),
            generated_ids=_optional(d, "generated_ids", _span, where),
        )


@dataclass(frozen=True)
class RoundRecord:
    """One finished round in the pool's round log: what was selected, what it cost, how T did."""

    round: int
    strategy: str = ""  # "" in a hand-made record that names none
    oracle: str = "simulated"
    selected: tuple[int, ...] = ()
    # Every field below is None in a record that lacks it (hand-made ones, or older versions);
    # dgaal's rounds write them all.
    oracle_queries: int | None = None
    free_labels: int | None = None
    generated_added: int | None = None
    labelled: int | None = None  # labelled rows after the round (real and generated)
    labelled_ratio: float | None = None  # labelled / real rows
    oracle_queries_total: int | None = None  # queries of every round so far
    candidates: int | None = None  # candidates left after the round
    labelled_real: int | None = None
    real_images: int | None = None  # real rows of the pool (the ratio's denominator)
    candidates_real: int | None = None  # real candidates left after the round
    picked_classes: tuple[int, ...] | None = None  # class histogram of the picks
    generated_share: float | None = None  # share of the picks that were generated rows
    d1_auc: float | None = None
    generated_distance: float | None = None
    generated_ids: tuple[int, int] | None = None
    accuracy: float | None = None  # T on the test split (None without one)
    per_class_accuracy: tuple[float | None, ...] | None = None
    test_loss: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    config: RoundConfig | None = None
    selection: dict[str, float] | None = None  # the strategy's selection settings, resolved
    run_config: dict[str, Any] | None = None  # RunConfig.to_dict() of the models
    workdir: str | None = None  # the round's folder

    @property
    def seconds(self) -> float:
        """Wall time of the round, all phases."""
        return round(sum(self.timings.values()), 3)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON-able), version included."""
        out = {"version": VERSION}
        out |= {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "round record") -> RoundRecord:
        """Parse a stored round record of any version (see the module docstring)."""
        d = _check_dict(data, where)
        _version(d, where)
        per_class = d.get("per_class_accuracy")
        selection = d.get("selection")
        run_config = d.get("run_config")
        return cls(
            round=_field(d, "round", _int, where),
            strategy=str(d.get("strategy") or ""),
            oracle=str(d.get("oracle", "simulated")),
            selected=_optional(d, "selected", _ids, where) or (),
            oracle_queries=_optional(d, "oracle_queries", _int, where),
            free_labels=_optional(d, "free_labels", _int, where),
            generated_added=_optional(d, "generated_added", _int, where),
            labelled=_optional(d, "labelled", _int, where),
            labelled_ratio=_optional(d, "labelled_ratio", _float, where),
            oracle_queries_total=_optional(d, "oracle_queries_total", _int, where),
            candidates=_optional(d, "candidates", _int, where),
            labelled_real=_optional(d, "labelled_real", _int, where),
            real_images=_optional(d, "real_images", _int, where),
            candidates_real=_optional(d, "candidates_real", _int, where),
            picked_classes=_optional(d, "picked_classes", _ids, where),
            generated_share=_optional(d, "generated_share", _float, where),
            d1_auc=_optional(d, "d1_auc", _float, where),
            generated_distance=_optional(d, "generated_distance", _float, where),
            generated_ids=_optional(d, "generated_ids", _span, where),
            accuracy=_optional(d, "accuracy", _float, where),
            per_class_accuracy=None
            if per_class is None
            else _field(d, "per_class_accuracy", _accuracies, where),
            test_loss=_optional(d, "test_loss", _float, where),
            timings=_optional(d, "timings", _timings, where) or {},
            config=_optional(d, "config", _config, where),
            selection={str(k): float(v) for k, v in selection.items()}
            if isinstance(selection, dict)
            else None,
            run_config=run_config if isinstance(run_config, dict) else None,
            workdir=None if d.get("workdir") is None else str(d["workdir"]),
        )


def _accuracies(value: Any) -> tuple[float | None, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("expected a list")
    return tuple(None if v is None else _float(v) for v in value)


class _Meta(Protocol):
    meta: dict[str, Any]

    def rounds(self) -> list[dict[str, Any]]: ...


def pending_round(reader: _Meta) -> PendingRound | None:
    """The pool's pending round (None when no round is unfinished); :class:`RecordError` when
    it does not parse."""
    raw = reader.meta.get(PENDING_KEY)
    return None if not raw else PendingRound.from_dict(raw)


def round_records(reader: _Meta) -> list[RoundRecord]:
    """The pool's round log, oldest first; :class:`RecordError` when a record does not parse."""
    return [RoundRecord.from_dict(r, f"round record {k}") for k, r in enumerate(reader.rounds(), 1)]


class _MetaWriter(Protocol):
    def update_meta(self, **values: Any) -> None: ...


def set_pending(writer: _MetaWriter, pending: PendingRound | None) -> None:
    """Stage ``pending`` (or no pending round) in a pool writer."""
    writer.update_meta(**{PENDING_KEY: None if pending is None else pending.to_dict()})


def total_queries(records: Sequence[RoundRecord]) -> int:
    """Oracle queries spent by ``records`` together."""
    return sum(r.oracle_queries or 0 for r in records)


def work_folder(reader: _Meta) -> Path | None:
    """The work folder the pool's last finished round ran in (None for pools made before it was
    recorded)."""
    raw = reader.meta.get(WORKDIR_KEY)
    return Path(raw) if isinstance(raw, str) and raw else None


def set_work_folder(writer: _MetaWriter, folder: Path) -> None:
    """Stage the work folder of the round being finished (absolute)."""
    writer.update_meta(**{WORKDIR_KEY: str(Path(folder).resolve())})
