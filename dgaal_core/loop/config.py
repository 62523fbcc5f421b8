"""What one ``dgaal round`` does: :class:`RoundConfig`, stored with every round record.

Imports no torch (only the torch-free model configuration and strategy registry), so the
command line can check a round's settings in one line before it loads torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dgaal_core.errors import ConfigError, EmptyPoolError, PoolExhaustedError
from dgaal_core.loop.strategies import Need, SelectionSettings, Strategy, strategy
from dgaal_core.model.config import RunConfig, preset
from dgaal_core.pool.schema import Origin, State
from dgaal_core.values import check_seed, check_size, size_of

if TYPE_CHECKING:
    from dgaal_core.pool.reader import PoolReader

TASK_MODELS = ("cnn", "linear", "linear-ssl")  # dgaal_core.loop.task_models (torch-free here)
# what D1 reads: G1's latent, or a projection of the pool's embeddings; "auto": the embeddings
# when the pool has them (resolved, and recorded, when a round starts: Round.run)
D1_INPUTS = ("auto", "image", "embedding")

# Fields of earlier versions that did nothing (scoring batches come from the provider):
# accepted in stored records, and dropped.
REMOVED_FIELDS = ("score_batch",)


@dataclass(frozen=True)
class RoundConfig:
    """What one ``dgaal round`` does; stored with every round record (``to_dict``)."""

    strategy: str = "dgaal"
    budget: float = 0.05  # < 1: fraction of the real training images; >= 1: a count
    oracle: str = "auto"  # auto: simulated when the pool has ground truth, else human
    preset: str = "small"
    seed: int = 0
    device: str = "auto"
    gan_steps: int | None = None  # override the preset's Algorithm 1 iterations
    gan_epochs: float | None = None  # or its passes over the pools
    task_epochs: int | None = None
    task_min_steps: int | None = None  # override the preset's least number of T steps
    coevolve_steps: int | None = None
    depth_limit: int = 2  # generated images of this depth are not used as parents again
    augment_ratio: float = 0.0  # section 4.3.2: share of x_g that goes straight to labelled
    # Selection settings of the D1 strategies; None takes the strategy's default
    # (its ``defaults``): dgaal-paper is the literal N lowest D1 scores.
    shortlist: float | None = None  # k: spread the N picks over the k*N lowest (k-center, z)
    task_weight: float | None = None  # weight of T's entropy rank fused with D1's rank
    generated_cap: float | None = None  # most share of generated images among a round's picks
    retrain_gan: bool | None = None  # re-run Algorithm 1 every round (None: the strategy's)
    pmse_weight: float | None = None  # lambda of Eq. 8 (None: the preset's 0.1)
    noise_spread: float = 0.05  # x_g's noise-head scales are drawn in [1 - s, 1 + s]
    noise_skips: bool = False  # the noise head also scales the U-Net's skips (ModelConfig)
    take_all: bool = False  # a budget above the candidates left takes them all (else refused)
    task_model: str = "cnn"  # T: "cnn" on the pixels; "linear" / "linear-ssl" on the embeddings
    d1_input: str = "auto"  # D1 reads "image": G1(x) (the paper), "embedding": P(the pool's
    # embedding), "auto": "embedding" on a pool with embeddings, else "image"

    def __post_init__(self) -> None:
        strategy(self.strategy)  # ConfigError (a ValueError) on an unknown name
        check_seed(self.seed)
        if self.oracle not in ("auto", "simulated", "human"):
            raise ConfigError(f"oracle must be auto, simulated or human, got {self.oracle!r}")
        check_size(self.budget, "budget")
        if not 0 <= self.augment_ratio <= 1:
            raise ConfigError(f"augment_ratio must lie in [0, 1], got {self.augment_ratio}")
        if self.depth_limit < 1:
            raise ConfigError(f"depth_limit must be >= 1, got {self.depth_limit}")
        self.selection()  # the selection settings: ConfigError when out of range
        if self.task_model not in TASK_MODELS:
            raise ConfigError(
                f"task_model must be one of {', '.join(TASK_MODELS)}, got {self.task_model!r}"
            )
        if self.d1_input not in D1_INPUTS:
            raise ConfigError(
                f"d1_input must be one of {', '.join(D1_INPUTS)}, got {self.d1_input!r}"
            )
        if not (math.isfinite(self.noise_spread) and 0 <= self.noise_spread < 1):
            raise ConfigError(f"noise_spread must lie in [0, 1), got {self.noise_spread}")

    @property
    def strategy_object(self) -> Strategy:
        """The :class:`~dgaal_core.loop.strategies.Strategy` this round selects with."""
        return strategy(self.strategy)

    def selection(self) -> SelectionSettings:
        """Shortlist factor, task weight and generated cap: explicit values over the strategy's
        defaults."""
        return self.strategy_object.defaults.with_overrides(
            shortlist=self.shortlist, task_weight=self.task_weight, generated_cap=self.generated_cap
        )

    def retrains_gan(self) -> bool:
        """Whether Algorithm 1 runs every round (else once, in the first round)."""
        if self.retrain_gan is None:
            return self.strategy_object.retrain_gan
        return bool(self.retrain_gan)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        """Inverse of :meth:`to_dict` (a record of an older version lacks the newer fields,
        which then take their defaults; the :data:`REMOVED_FIELDS` it has are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in REMOVED_FIELDS}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"RoundConfig: unknown field(s) {unknown}")
        data.setdefault("d1_input", "image")  # what every round before the field did
        return cls(**data)

    def with_d1_input(self, pool_has_embeddings: bool) -> RoundConfig:
        """This config with ``d1_input="auto"`` resolved for a pool (others as they are)."""
        if self.d1_input != "auto":
            return self
        return dataclasses.replace(
            self, d1_input="embedding" if pool_has_embeddings else "image"
        )  # fmt: skip

    def run_config(
        self, image_shape: tuple[int, int, int], num_classes: int, embedding_dim: int = 0
    ) -> RunConfig:
        """The model/training configuration for this round: the preset plus the overrides.
        ``embedding_dim``: the pool's embedding size, which D1 reads when ``d1_input`` says so."""
        overrides: dict[str, Any] = {"seed": self.seed, "device": self.device}
        names = (
            "gan_steps", "gan_epochs", "task_epochs", "task_min_steps", "coevolve_steps",
            "pmse_weight",
        )  # fmt: skip
        for name in names:
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        run = preset(self.preset, image_shape, num_classes, **overrides)
        if self.noise_skips:
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, noise_skips=True))
        if self.d1_input == "embedding" and embedding_dim:
            model = dataclasses.replace(run.model, embedding_dim=int(embedding_dim))
            run = dataclasses.replace(run, model=model)
        return run

    def budget_count(self, real_rows: int) -> int:
        """The number of images to select this round."""
        return max(1, size_of(self.budget, real_rows))


def check_budget(
    config: RoundConfig, reader: PoolReader, log: Callable[[str], None] | None = None
) -> int:
    """The number of images to select, checked against the candidates left before the round
    writes anything: more than are left is refused unless ``take_all`` asks for all of them (an
    explicit choice: it ends the pool's supply of real candidates)."""
    left = int(np.sum(reader.states == State.UNLABELLED))
    if left == 0:
        raise EmptyPoolError(f"{reader.path}: no candidates left; the pool is exhausted")
    strategy = config.strategy_object
    if Need.GAN in strategy.needs(config.selection()) and not np.any(
        reader.states == State.LABELLED
    ):
        raise EmptyPoolError(
            f"{reader.path}: no labelled images, and strategy '{config.strategy}' "
            "trains on labelled and unlabelled ones; label a first set with --strategy random "
            "or typiclust"
        )
    wanted = config.budget_count(int(np.sum(reader.fields["origin"] == Origin.REAL)))
    if wanted <= left:
        return wanted
    if not config.take_all:
        asked = (
            f"{int(config.budget)}"
            if config.budget >= 1
            else f"{config.budget:g} ({wanted} images)"
        )
        raise PoolExhaustedError(
            f"--budget {asked} is more than the {left} candidates left in {reader.path}; "
            f"give --budget {left} or less, or --take-all to label all of them"
        )
    if log is not None:
        log(f"budget {wanted} > {left} candidates left: taking them all (take_all)")
    return left
