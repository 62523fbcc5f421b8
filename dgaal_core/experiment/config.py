"""Configuration of an experiment: the schedule of labelled-set sizes, and the strategies,
seeds and round settings every run shares (see :mod:`dgaal_core.experiment`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.strategies import strategy
from dgaal_core.values import check_seed, check_size, size_of

PAPER_STRATEGIES = ("dgaal", "dgaal-paper", "vaal", "vaal-coevo", "random")
# RoundConfig fields the experiment sets per run or per round (not part of the shared settings)
_PER_ROUND = ("strategy", "seed", "budget", "oracle", "take_all")


class ExperimentError(DgaalError):
    """The experiment cannot run as asked (bad schedule, unusable source pool, settings clash)."""


def _size(value: float, total: int, what: str) -> int:
    """A fraction (< 1) of ``total`` or a whole count (>= 1), as a count."""
    return size_of(check_size(value, f"--{what}", error=ExperimentError), total)


@dataclass(frozen=True)
class Schedule:
    """Labelled-set sizes: ``initial`` at round 0, then ``step`` more per round up to ``until``."""

    initial: float = 0.1
    step: float = 0.05
    until: float = 0.4

    def __post_init__(self) -> None:
        for name in ("initial", "step", "until"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ExperimentError(f"--{name} must be a number > 0, got {value!r}")

    def targets(self, real: int) -> list[int]:
        """Labelled counts after round 0 (the initial set), round 1, round 2, ... for a pool of
        ``real`` real images. With fractions, round k's target is ``(initial + k * step) * real``
        rounded (never accumulated rounding), so the ratios stay on the grid."""
        start = _size(self.initial, real, "initial")
        end = _size(self.until, real, "until")
        step = self.step * real if self.step < 1 else float(_size(self.step, real, "step"))
        if step < 1:
            raise ExperimentError(f"--step {self.step} is less than one image of {real}")
        if start < 2:
            raise ExperimentError(f"--initial {self.initial} gives {start} images; T needs 2")
        if end > real:
            raise ExperimentError(f"--until {self.until} asks for {end} of {real} real images")
        if end <= start:
            raise ExperimentError(f"--until {self.until} must exceed --initial {self.initial}")
        on_grid = self.initial < 1 and self.step < 1

        def target(k: int) -> int:
            if on_grid:  # the ratio grid initial + k * step, each point rounded once
                return round(round(self.initial + k * self.step, 12) * real)
            return start + round(k * step)

        targets = [start]
        k = 1
        while targets[-1] < end:
            targets.append(min(end, max(targets[-1] + 1, target(k))))
            k += 1
        return targets

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExperimentConfig:
    """Strategies x seeds, the schedule, and the round settings every run shares.

    ``round`` is a :class:`RoundConfig` template: its strategy, seed, budget and oracle are set
    by the experiment (the oracle is always the simulated one).
    """

    strategies: tuple[str, ...] = PAPER_STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    schedule: Schedule = field(default_factory=Schedule)
    round: RoundConfig = field(default_factory=RoundConfig)
    label_fidelity: bool = True  # judge each round's x_g with a T trained on all ground truth

    def __post_init__(self) -> None:
        if not self.strategies or not self.seeds:
            raise ExperimentError("an experiment needs at least one strategy and one seed")
        for name in self.strategies:
            try:
                strategy(name)
            except ValueError as e:
                raise ExperimentError(str(e)) from None
        for seq, what in ((self.strategies, "strategies"), (self.seeds, "seeds")):
            if len(set(seq)) != len(seq):
                raise ExperimentError(f"--{what} lists a value twice: {list(seq)}")
        for seed in self.seeds:  # checked now: a run folder is named after its seed
            check_seed(seed, "--seeds")

    def shared_round_settings(self) -> dict[str, Any]:
        """The round settings that must match when an experiment is resumed."""
        return {k: v for k, v in self.round.to_dict().items() if k not in _PER_ROUND}

    def round_config(self, strategy: str, seed: int, budget: int) -> RoundConfig:
        """The config of one round of one run."""
        return dataclasses.replace(
            self.round,
            strategy=strategy,
            seed=seed,
            budget=float(budget),
            oracle="simulated",
            take_all=True,  # the last round takes the remainder when a target exceeds the pool
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in ``results.json``)."""
        return {
            "strategies": list(self.strategies),
            "seeds": list(self.seeds),
            "schedule": self.schedule.to_dict(),
            "round": self.shared_round_settings(),
        }


def parse_list(text: str, kind: type = str) -> tuple[Any, ...]:
    """``"a,b, c"`` -> ``("a", "b", "c")`` (``kind=int`` for seeds)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    try:
        return tuple(kind(s) for s in items)
    except ValueError:
        raise ExperimentError(
            f"expected a comma-separated list of {kind.__name__}, got {text!r}"
        ) from None
