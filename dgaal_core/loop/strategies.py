"""Selection strategies as objects: what each needs from the round, its selection settings with
their defaults, and ``select(context, n, rng) -> ids``.

Torch-free (numpy only): the command line checks ``--strategy`` and reports read the registry
without loading torch. The round builds a :class:`SelectionContext` that computes what a
strategy asks for lazily (D1's scores through the exported sampler, the previous round's T,
latents of a shortlist); the contract suite (``tests/test_strategies.py``) runs every registered
strategy against a context of plain arrays.

The contract of ``select``: unique *absolute pool ids*, ascending, drawn from
``context.candidates``, exactly ``n`` of them; the same ids for the same context and the same
``rng`` state; :class:`~dgaal_core.errors.EmptyPoolError` without candidates and
:class:`~dgaal_core.errors.PoolExhaustedError` for ``n`` above them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dgaal_core.errors import ConfigError
from dgaal_core.loop.selection import (
    check_budget,
    entropy,
    fuse_ranks,
    margin,
    select_badge,
    select_coreset,
    select_lowest,
    select_lowest_capped,
    select_random,
    select_spread,
    select_typiclust,
)


class Need(enum.Enum):
    """What a strategy asks of the round."""

    GAN = "gan"  # Algorithm 1 (G1/D1, and G/D2): the D1 strategies
    D1_SCORES = "d1_scores"  # D1(G1(x)) of the candidates, from the exported sampler
    LATENTS = "latents"  # the sampler's latent z of a shortlist
    TASK_PROBS = "task_probs"  # the previous round's T: class probabilities of the candidates
    TASK_FEATURES = "task_features"  # T's penultimate features of candidates and labelled rows
    EMBEDDINGS = "embeddings"  # the pool's embeddings (`dgaal pool embed`)


@dataclass(frozen=True)
class SelectionSettings:
    """The selection settings of a round (``RoundConfig`` fields of the same names; unset ones
    take the strategy's defaults). Only the D1 strategies use them; the neutral values below
    change nothing."""

    shortlist: float = 1.0  # k: spread the N picks over the k*N lowest (k-center in G1's z)
    task_weight: float = 0.0  # weight of T's entropy rank fused with D1's rank
    generated_cap: float = 1.0  # most share of generated images among a round's picks

    def __post_init__(self) -> None:
        checks = (
            ("shortlist", lambda v: v >= 1, "a number >= 1"),
            ("task_weight", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            ("generated_cap", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        )
        for name, ok, expected in checks:
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"{name} must be {expected}, got {value}")

    def to_dict(self) -> dict[str, float]:
        """``{"shortlist": ..., "task_weight": ..., "generated_cap": ...}`` (stored per round)."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}

    def with_overrides(self, **values: float | None) -> SelectionSettings:
        """These settings with the given values that are not None."""
        given = {k: float(v) for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **given)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SelectionSettings))


class SelectionContext(Protocol):
    """What a strategy may ask of the round, computed on first use."""

    candidates: np.ndarray  # ascending pool ids of the candidates
    generated: np.ndarray  # bool mask over ``candidates``: generated rows (free labels)

    def d1_scores(self) -> np.ndarray:
        """D1's probability "labelled" for each candidate (lower = picked first)."""
        ...

    def latents(self, ids: np.ndarray) -> np.ndarray:
        """The sampler's latent z of the candidates ``ids`` (ascending), [len(ids), z_dim]."""
        ...

    def task_probs(self) -> np.ndarray:
        """The previous round's T: class probabilities of each candidate, [N, K]."""
        ...

    def task_features(self) -> tuple[np.ndarray, np.ndarray]:
        """T's penultimate features of the candidates and of the labelled rows."""
        ...

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The pool's embeddings of the candidates and of the labelled rows."""
        ...


class Strategy(Protocol):
    """A selection strategy (see the module docstring for the contract of :meth:`select`)."""

    @property
    def name(self) -> str: ...

    @property
    def defaults(self) -> SelectionSettings:
        """Its selection settings when a round sets none."""
        ...

    @property
    def coevolve(self) -> bool:
        """Whether D1 co-evolves after selection (Eq. 9)."""
        ...

    @property
    def generate(self) -> bool:
        """Whether x_g = G(x_s) joins the pool after selection."""
        ...

    @property
    def retrain_gan(self) -> bool:
        """Whether Algorithm 1 re-runs every round (VAAL's way), else once then co-evolves."""
        ...

    def needs(self, settings: SelectionSettings) -> frozenset[Need]:
        """What :meth:`select` will ask of the context with ``settings``."""
        ...

    def select(
        self,
        context: SelectionContext,
        n: int,
        rng: np.random.Generator,
        settings: SelectionSettings,
    ) -> np.ndarray:
        """``n`` candidates to label, ascending pool ids."""
        ...


@dataclass(frozen=True)
class D1Strategy:
    """DGAAL and VAAL: the N lowest D1 scores, optionally fused with T's uncertainty, capped in
    generated share and spread over a k*N shortlist in G1's latent space."""

    name: str
    coevolve: bool
    generate: bool
    retrain_gan: bool
    defaults: SelectionSettings = SelectionSettings()

    def needs(self, settings: SelectionSettings) -> frozenset[Need]:
        needs = {Need.GAN, Need.D1_SCORES}
        if settings.task_weight > 0:
            needs.add(Need.TASK_PROBS)
        if settings.shortlist > 1:
            needs.add(Need.LATENTS)
        return frozenset(needs)

    def select(
        self,
        context: SelectionContext,
        n: int,
        rng: np.random.Generator,
        settings: SelectionSettings,
    ) -> np.ndarray:
        candidates, generated = context.candidates, context.generated
        check_budget(candidates, n)
        order = context.d1_scores()
        if settings.task_weight > 0:
            order = fuse_ranks(order, -entropy(context.task_probs()), settings.task_weight)
        cap = settings.generated_cap
        m = min(candidates.size, math.ceil(settings.shortlist * n))
        if m <= n:
            return select_lowest_capped(candidates, order, n, generated, cap)
        short = select_lowest_capped(candidates, order, m, generated, cap)
        pos = np.searchsorted(candidates, short)
        z = context.latents(short)
        return select_spread(short, order[pos], z, n, generated[pos], cap)


@dataclass(frozen=True)
class _BaselineStrategy:
    """A strategy that trains no GAN and changes nothing after selection: it only picks."""

    name: str
    asks: frozenset[Need] = frozenset()
    coevolve: bool = False
    generate: bool = False
    retrain_gan: bool = False
    defaults: SelectionSettings = SelectionSettings()

    def needs(self, settings: SelectionSettings) -> frozenset[Need]:
        return self.asks

    def select(
        self, context: SelectionContext, n: int, rng: np.random.Generator, settings: Any = None
    ) -> np.ndarray:
        check_budget(context.candidates, n)
        return self.pick(context, n, rng)

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` of the candidates (the budget is checked), ascending ids."""
        raise NotImplementedError


@dataclass(frozen=True)
class RandomStrategy(_BaselineStrategy):
    """Uniformly at random (the paper's baseline)."""

    name: str = "random"

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        return select_random(context.candidates, n, rng)


@dataclass(frozen=True)
class EntropyStrategy(_BaselineStrategy):
    """The candidates whose class distribution under the previous round's T has the highest
    entropy."""

    name: str = "entropy"
    asks: frozenset[Need] = frozenset({Need.TASK_PROBS})

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(select_lowest(context.candidates, -entropy(context.task_probs()), n))


@dataclass(frozen=True)
class CoresetStrategy(_BaselineStrategy):
    """k-center greedy on T's penultimate features (Sener & Savarese)."""

    name: str = "coreset"
    asks: frozenset[Need] = frozenset({Need.TASK_FEATURES})

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        cand, labelled = context.task_features()
        return select_coreset(context.candidates, cand, labelled, n)


@dataclass(frozen=True)
class MarginStrategy(_BaselineStrategy):
    """The candidates whose two most likely classes under the previous round's T are closest
    (smallest margin)."""

    name: str = "margin"
    asks: frozenset[Need] = frozenset({Need.TASK_PROBS})

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(select_lowest(context.candidates, margin(context.task_probs()), n))


@dataclass(frozen=True)
class BadgeStrategy(_BaselineStrategy):
    """BADGE: diverse and uncertain, k-means++ on T's last-layer gradient embeddings."""

    name: str = "badge"
    asks: frozenset[Need] = frozenset({Need.TASK_PROBS, Need.TASK_FEATURES})

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        features, _ = context.task_features()
        return select_badge(context.candidates, context.task_probs(), features, n, rng)


@dataclass(frozen=True)
class TypiClustStrategy(_BaselineStrategy):
    """TypiClust: the most typical candidate of each cluster the labelled set covers least, on
    the pool's embeddings; needs no T, so it also picks a pool's very first labels."""

    name: str = "typiclust"
    asks: frozenset[Need] = frozenset({Need.EMBEDDINGS})

    def pick(self, context: SelectionContext, n: int, rng: np.random.Generator) -> np.ndarray:
        cand, labelled = context.embeddings()
        return select_typiclust(context.candidates, cand, labelled, n, rng)


# ``dgaal-paper`` is the literal reading of section 3.2 (the N lowest D1 scores, nothing else);
# ``dgaal`` is the same method with the settings benchmarks/al_curve.py measured best on the
# validation splits (see the README's "What the benchmarks say").
_REGISTERED: tuple[Strategy, ...] = (
    D1Strategy(
        "dgaal", coevolve=True, generate=True, retrain_gan=False,
        defaults=SelectionSettings(shortlist=4.0, task_weight=0.3, generated_cap=0.5),
    ),
    D1Strategy("dgaal-paper", coevolve=True, generate=True, retrain_gan=False),
    D1Strategy("vaal", coevolve=False, generate=False, retrain_gan=True),
    D1Strategy("vaal-coevo", coevolve=True, generate=False, retrain_gan=False),
    RandomStrategy(),
    EntropyStrategy(),
    MarginStrategy(),
    CoresetStrategy(),
    BadgeStrategy(),
    TypiClustStrategy(),
)  # fmt: skip
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _REGISTERED}


def strategy(name: str) -> Strategy:
    """Look a strategy up by name; :class:`ConfigError` (a ``ValueError``) lists the names."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def trains_gan(name: str) -> bool:
    """Whether strategy ``name`` needs Algorithm 1 (with its default settings)."""
    s = strategy(name)
    return Need.GAN in s.needs(s.defaults)
