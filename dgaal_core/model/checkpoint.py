"""One checkpoint per round: configs, weights, optimiser states, random streams, step counts.

The checkpoint is one dict of tensors and plain containers (dict, list, tuple, str, int, float,
bool, None), so it loads with ``torch.load(path, weights_only=True)`` and nothing else: configs are
stored as dicts, the numpy Generator's state as its plain ``bit_generator.state`` dict, the torch
Generator's state as a uint8 tensor. Spectral-norm power-iteration vectors (``_u``, ``_v``) are
buffers in D2's ``state_dict`` and come back exactly. Resuming on CPU is bit-exact: N steps, save,
load, N steps equals 2N steps.

Writes are atomic (:mod:`dgaal_core.atomic`): a temporary file in the same folder is written,
fsynced and ``os.replace``-d over the target, and the folder is fsynced; a crash leaves the old
checkpoint or the new one, never half of one.

Layout::

    {"format": "dgaal-checkpoint", "version": 1, "round": int,
     "config": {"model": {...}, "train": {...}},
     "models": {"g", "d1", "d2": state_dict}, "task": state_dict | None,
     "optimizers": {"g1", "d1", "g", "d2": state_dict},
     "rng": {"numpy": dict, "torch": uint8 tensor}, "step": int, "coevolve_step": int,
     "extra": dict}
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgaal_core.atomic import write_bytes
from dgaal_core.errors import DgaalError
from dgaal_core.model.config import ModelConfig, RunConfig, TrainConfig
from dgaal_core.model.networks import ConvClassifier, build_models, build_task_model
from dgaal_core.model.training import DGAALTrainer

FORMAT = "dgaal-checkpoint"
VERSION = 1

Checkpoint = dict[str, Any]


class CheckpointError(DgaalError):
    """A checkpoint file is missing, not a dgaal checkpoint, or of an unsupported version."""


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is made of tensors and plain containers only."""
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"checkpoint {where}: key {k!r} is not a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"checkpoint {where}: {type(value).__name__} cannot be loaded weights_only")


def make_checkpoint(
    trainer: DGAALTrainer,
    *,
    task: nn.Module | None = None,
    round_index: int = 0,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """The checkpoint dict of ``trainer`` (G, D1, D2, optimisers, RNG, steps) plus T's weights."""
    ckpt: Checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "round": int(round_index),
        "config": {"model": trainer.model_config.to_dict(), "train": trainer.config.to_dict()},
        **trainer.state_dict(),
        "task": None if task is None else task.state_dict(),
        "extra": dict(extra or {}),
    }
    _check_plain(ckpt, "")
    return ckpt


def save_checkpoint(
    path: str | Path,
    trainer: DGAALTrainer,
    *,
    task: nn.Module | None = None,
    round_index: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write :func:`make_checkpoint` to ``path`` atomically; returns the path."""
    ckpt = make_checkpoint(trainer, task=task, round_index=round_index, extra=extra)
    return write_atomic(path, ckpt)


def write_atomic(path: str | Path, obj: Checkpoint) -> Path:
    """``torch.save`` into memory, then :func:`dgaal_core.atomic.write_bytes` (a temporary file
    beside ``path``, fsync, ``os.replace``, fsync of the folder). Serialising first means a full
    disk is a plain ``OSError`` from a Python write, never a half-written file or an error from
    inside torch's writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint (``weights_only=True``, tensors on CPU) and check its format."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint file") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable dgaal checkpoint ({first})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dgaal checkpoint (expected format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')!r} unsupported, expected {VERSION}"
        )
    return ckpt


def run_config_of(ckpt: Checkpoint) -> RunConfig:
    """The configuration a checkpoint was written with."""
    return RunConfig.from_dict(ckpt["config"])


def trainer_from_checkpoint(
    ckpt: Checkpoint,
    *,
    train_config: TrainConfig | None = None,
    device: str | torch.device | None = None,
    optimizers: bool = True,
    rng: bool = True,
) -> DGAALTrainer:
    """Rebuild the trainer of ``ckpt``: resume (defaults) or warm start (``rng=False`` keeps fresh
    streams seeded from ``train_config``; ``optimizers=False`` starts fresh optimisers)."""
    run = run_config_of(ckpt)
    train = run.train if train_config is None else train_config
    trainer = DGAALTrainer(build_models(run.model, train.seed), run.model, train, device)
    trainer.load_state_dict(ckpt, optimizers=optimizers, rng=rng)
    return trainer


def task_model_from_checkpoint(ckpt: Checkpoint) -> ConvClassifier | None:
    """T with the checkpoint's weights (on CPU), or None when it holds none."""
    if ckpt.get("task") is None:
        return None
    model_config = ModelConfig.from_dict(ckpt["config"]["model"])
    task = build_task_model(model_config, 0)
    task.load_state_dict(ckpt["task"])
    return task
