"""Configuration of the DGAAL models and of their training (Algorithm 1 and the task model T).

Frozen dataclasses with explicit numbers that round-trip to plain dicts (``to_dict`` /
``from_dict``), so every round can store the exact configuration it ran with, and
:func:`config_hash` can name it in export metadata. Two presets:

- ``"paper"``: the paper's stated values (Adam betas (0.9, 0.99), lr 1e-3 for G1/D1 and 3e-3 for
  G, D2 and T, batch 64, z_dim 32 up to 32 px and 64 above, VGG16 with Xavier init for T); the
  sizes the paper does not state (U-Net width and depth, residual blocks, epochs) are our choices.
- ``"small"``: narrow networks and few steps, for 2-core CPUs, tests and the demo.

This module imports no torch: configs can be read, validated and hashed anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from dgaal_core.errors import ConfigError
from dgaal_core.values import check_seed

TaskKind = Literal["vgg16", "small"]
DeviceName = Literal["auto", "cpu", "cuda"]
TASK_KINDS = ("vgg16", "small")
DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("paper", "small")
# TrainConfig fields of earlier versions that did nothing (T always evaluated in batches of 256,
# was always rebuilt from scratch, and the GAN always warm-started): accepted when reading old
# checkpoints and round records, and dropped.
REMOVED_TRAIN_FIELDS = ("eval_batch_size", "warm_start", "retrain_task_from_scratch")


def default_z_dim(image_shape: tuple[int, ...]) -> int:
    """The paper's latent size: 32 for images up to 32 px on a side, 64 for larger ones."""
    return 32 if max(image_shape[0], image_shape[1]) <= 32 else 64


def _check(cond: bool, cls_name: str, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{cls_name}.{name}: expected {expected}, got {value!r}")


def _int_tuple(value: Any, n: int, cls_name: str, name: str) -> tuple[int, ...]:
    ok = isinstance(value, list | tuple) and len(value) == n
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    _check(ok, cls_name, name, f"{n} integers", value)
    return tuple(int(v) for v in value)


_C = TypeVar("_C")


def _from_dict(cls: type[_C], data: dict[str, Any], dropped: tuple[str, ...] = ()) -> _C:
    """Build dataclass ``cls`` from a plain dict: unknown keys are errors (but for ``dropped``,
    fields of earlier versions that are ignored), missing ones default."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in dropped}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of G (U-Net), D1 (MLP), D2 (critic) and T (task classifier).

    ``z_dim=None`` resolves to :func:`default_z_dim` at construction, so the stored dict is
    always explicit.
    """

    image_shape: tuple[int, int, int]  # (H, W, C) as stored in the pool
    num_classes: int
    z_dim: int | None = None
    g_channels: int = 64  # width of the U-Net's first level; doubles per downsampling
    g_max_channels: int = 256
    g_res_blocks: int = 2
    g_max_down: int = 4  # most stride-2 stages; fewer when the image is small
    d1_hidden: int = 512
    d2_channels: int = 64
    d2_max_channels: int = 256
    task_kind: TaskKind = "vgg16"
    task_width: int = 64  # VGG16: channels of the first stage (64 = the standard VGG16)
    noise_skips: bool = False  # the noise head's scales also scale the U-Net's skip features
    # > 0: D1 reads a trained projection of the pool's frozen embeddings (this many dimensions,
    # the encoder's output) instead of G1's latent; the projection takes G1's role in Eq. 4
    embedding_dim: int = 0

    def __post_init__(self) -> None:
        n = type(self).__name__
        shape = _int_tuple(self.image_shape, 3, n, "image_shape")
        _check(shape[0] >= 4 and shape[1] >= 4, n, "image_shape", "H, W >= 4", shape)
        _check(1 <= shape[2] <= 4, n, "image_shape", "1 to 4 channels", shape)
        object.__setattr__(self, "image_shape", shape)
        if self.z_dim is None:
            object.__setattr__(self, "z_dim", default_z_dim(shape))
        for name in (
            "num_classes", "z_dim", "g_channels", "g_max_channels", "d1_hidden",
            "d2_channels", "d2_max_channels", "task_width",
        ):  # fmt: skip
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            _check(ok, n, name, "a positive integer", value)
        _check(self.num_classes >= 2, n, "num_classes", "at least 2", self.num_classes)
        for name in ("g_res_blocks", "g_max_down"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, n, name, "an integer >= 0", value)
        _check(self.task_kind in TASK_KINDS, n, "task_kind", f"one of {TASK_KINDS}", self.task_kind)
        e = self.embedding_dim
        ok = isinstance(e, int) and not isinstance(e, bool) and e >= 0
        _check(ok, n, "embedding_dim", "an integer >= 0", e)

    @property
    def latent_dim(self) -> int:
        """``z_dim`` as a plain int (always resolved after construction)."""
        assert self.z_dim is not None
        return self.z_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        if not self.embedding_dim:  # the paper's D1: stored as before, so old checkpoints match
            del d["embedding_dim"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on unknown or bad fields."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of Algorithm 1 (G1, D1, G, D2), co-evolution (Eq. 9) and of the task model T."""

    batch_size: int = 64
    gan_epochs: float = 100.0  # passes over the union of the pools, when gan_steps is None
    gan_steps: int | None = None  # iterations of Algorithm 1; overrides gan_epochs
    lr_g1: float = 1e-3  # alpha_1
    lr_d1: float = 1e-3  # alpha_2
    lr_g: float = 3e-3  # alpha_3
    lr_d2: float = 3e-3  # alpha_4
    lr_t: float = 3e-3  # alpha_5
    betas: tuple[float, float] = (0.9, 0.99)
    pmse_weight: float = 0.1  # lambda of Eq. 8
    coevolve_steps: int = 100  # D1-only steps of Eq. 9 after each selection
    task_epochs: int = 100  # passes over the labelled set, bounded by the two below
    task_min_steps: int = 0  # T gets at least this many Adam steps (small labelled sets)
    task_max_steps: int | None = None  # and at most this many (None: no bound)
    task_weight_decay: float = 5e-4  # decoupled (AdamW) weight decay of T
    task_warmup: float = 0.05  # share of T's steps with a linear learning-rate warm-up
    task_ema: float = 0.0  # > 0: T ends as the exponential moving average of its weights
    augment: bool = True  # random crop with padding (+ horizontal flip for RGB) when training T
    seed: int = 0
    device: DeviceName = "auto"
    amp: bool = True  # bf16 autocast on CUDA; the CPU path is always plain fp32

    def __post_init__(self) -> None:
        n = type(self).__name__
        betas = self.betas
        ok = isinstance(betas, list | tuple) and len(betas) == 2
        ok = ok and all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in betas)
        _check(ok, n, "betas", "two numbers in [0, 1)", betas)
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        for name in ("batch_size", "task_epochs"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            _check(ok, n, name, "a positive integer", value)
        _check(self.batch_size >= 2, n, "batch_size", "at least 2 (batch norm)", self.batch_size)
        for name in ("coevolve_steps", "task_min_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, n, name, "an integer >= 0", value)
        check_seed(self.seed, f"{n}.seed")
        if self.gan_steps is not None:
            ok = isinstance(self.gan_steps, int) and self.gan_steps >= 0
            _check(ok, n, "gan_steps", "None or an integer >= 0", self.gan_steps)
        if self.task_max_steps is not None:
            ok = isinstance(self.task_max_steps, int) and self.task_max_steps >= 1
            _check(ok, n, "task_max_steps", "None or an integer >= 1", self.task_max_steps)
        for name in ("task_warmup", "task_ema"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and 0 <= value < 1
            _check(ok, n, name, "a number in [0, 1)", value)
        for name in (
            "gan_epochs", "lr_g1", "lr_d1", "lr_g", "lr_d2", "lr_t", "pmse_weight",
            "task_weight_decay",
        ):  # fmt: skip
            value = getattr(self, name)
            ok = isinstance(value, int | float) and math.isfinite(value) and value >= 0
            _check(ok, n, name, "a finite number >= 0", value)
        _check(self.device in DEVICES, n, "device", f"one of {DEVICES}", self.device)

    def num_gan_steps(self, num_images: int) -> int:
        """Iterations of Algorithm 1 for pools holding ``num_images`` images in all."""
        if self.gan_steps is not None:
            return self.gan_steps
        return math.ceil(self.gan_epochs * num_images / self.batch_size)

    def num_task_steps(self, num_labelled: int) -> int:
        """Adam steps of T for ``num_labelled`` images: ``task_epochs`` passes, at least
        ``task_min_steps`` and at most ``task_max_steps``.

        Epochs alone scale badly: 15 epochs are 45 steps at 72 images and 1,500 at 3,200, so a
        small labelled set leaves T under-trained and its accuracy mostly noise.
        """
        steps = self.task_epochs * math.ceil(num_labelled / self.batch_size)
        steps = max(steps, self.task_min_steps)
        return steps if self.task_max_steps is None else min(steps, self.task_max_steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on unknown or bad fields
        (the :data:`REMOVED_TRAIN_FIELDS` of earlier versions are dropped)."""
        return _from_dict(cls, data, REMOVED_TRAIN_FIELDS)


@dataclass(frozen=True)
class RunConfig:
    """Model and training configuration together, as stored with every round."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """``{"model": {...}, "train": {...}}``."""
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or set(data) - {"model", "train"} or "model" not in data:
            raise ConfigError("RunConfig: expected a dict with keys 'model' and 'train'")
        return cls(ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]))


def preset(
    name: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    **train_overrides: Any,
) -> RunConfig:
    """A named configuration for images of ``image_shape`` (H, W, C).

    ``"paper"``: paper hyper-parameters, VGG16-BN for T. ``"small"``: narrow networks and short
    schedules for 2-core CPUs, tests and the demo. ``train_overrides`` replace TrainConfig fields.
    """
    shape = tuple(image_shape)
    if name == "paper":
        model = ModelConfig(image_shape=shape, num_classes=num_classes)  # type: ignore[arg-type]
        train = TrainConfig()
    elif name == "small":
        model = ModelConfig(
            image_shape=shape,  # type: ignore[arg-type]
            num_classes=num_classes,
            g_channels=16,
            g_max_channels=64,
            g_res_blocks=1,
            g_max_down=3,
            d1_hidden=64,
            d2_channels=16,
            d2_max_channels=64,
            task_kind="small",
            task_width=16,
        )
        train = TrainConfig(
            batch_size=32, gan_steps=300, coevolve_steps=50, task_epochs=30, task_min_steps=1000
        )
    else:
        raise ConfigError(f"preset: unknown name {name!r}; expected one of {PRESETS}")
    if train_overrides:
        train = TrainConfig.from_dict({**train.to_dict(), **train_overrides})
    return RunConfig(model, train)


def config_hash(config: Any) -> str:
    """Stable sha256 hex digest of a config (anything with ``to_dict()``, or a plain dict)."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
