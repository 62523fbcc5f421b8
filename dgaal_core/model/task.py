"""Training and evaluating the task model T (Algorithm 2, lines 17-18).

T learns from the labelled pool only: uint8 NHWC images with labels, read through a
:class:`~dgaal_core.model.data.DataSource`, lightly augmented (random crop with padding, plus
horizontal flip for RGB), with AdamW (lr alpha_5, betas (0.9, 0.99), weight decay) under a
warm-up + cosine schedule, for a step budget that grows with the labelled set (see
:func:`train_task`). The round rebuilds T from scratch every round with
:func:`dgaal_core.model.networks.build_task_model`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dgaal_core.errors import EmptyPoolError
from dgaal_core.model import losses
from dgaal_core.model.config import TrainConfig
from dgaal_core.model.data import DataSource, augment, epoch_batches, to_model_input
from dgaal_core.model.training import History, autocast, resolve_device
from dgaal_core.progress import Progress, silent


def _labels(labels: np.ndarray | None, device: torch.device) -> torch.Tensor:
    if labels is None:
        raise ValueError("the task model needs labelled images; the source has no labels")
    return torch.as_tensor(labels, dtype=torch.int64).to(device)


def task_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the task learning rate (alpha_5), the configured betas and weight decay.

    Batch-norm scales and biases are not decayed (decaying them only fights normalisation).
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.task_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr_t, betas=config.betas)


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear warm-up over the first ``warmup``
    share of the steps, then a cosine decay to zero."""
    w = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def task_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    amp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of T on a batch (B, C, H, W) in [-1, 1]; returns (loss, logits)."""
    with autocast(x.device, amp):
        logits = model(x)  # (B, classes)
        loss = losses.task_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def _batches(
    source: DataSource, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray | None]]]:
    """Endless shuffled passes over ``source``: (pass number, batch)."""
    epoch = 0
    while True:
        for batch in epoch_batches(source, batch_size, rng):
            yield epoch, batch
        epoch += 1


def train_task(
    model: nn.Module,
    source: DataSource,
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    stage: str = "Task model",
) -> History:
    """Train ``model`` (in place) on ``source`` by a step budget.

    The budget is ``steps`` if given, else ``epochs`` passes if given, else
    :meth:`TrainConfig.num_task_steps` (the configured epochs, bounded below and above). The
    learning rate warms up linearly and then follows a cosine decay to zero over the budget, with
    AdamW weight decay: the end of the schedule, not a lucky epoch, decides T's accuracy, which
    makes T much less noisy from seed to seed. Returns per-pass mean training loss and accuracy
    (on the augmented batches).
    """
    if len(source) < 2:
        raise EmptyPoolError(f"train_task needs at least 2 labelled images, got {len(source)}")
    dev = resolve_device(config.device if device is None else device)
    per_pass = max(1, len(source) // config.batch_size + (len(source) % config.batch_size > 1))
    if steps is None:
        steps = epochs * per_pass if epochs is not None else config.num_task_steps(len(source))
    model.to(dev).train()
    opt = task_optimizer(model, config)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, steps, config.task_warmup)
    )
    history: History = {"loss": [], "accuracy": []}
    sums = {"loss": 0.0, "correct": 0, "seen": 0}
    ema = None
    if config.task_ema > 0:  # averages weights and batch-norm buffers
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(config.task_ema), use_buffers=True
        )

    def close_pass() -> dict[str, float]:
        seen = max(1, int(sums["seen"]))
        out = {"loss": sums["loss"] / seen, "accuracy": sums["correct"] / seen}
        for k, v in out.items():
            history[k].append(v)
        sums.update(loss=0.0, correct=0, seen=0)
        return out

    current = 0
    report = progress or silent
    for step, (epoch, (images, labels)) in zip(
        range(steps), _batches(source, config.batch_size, rng), strict=False
    ):
        if epoch != current:
            close_pass()
            current = epoch
        if config.augment:
            images = augment(images, rng)
        x, y = to_model_input(images, dev), _labels(labels, dev)
        loss, logits = task_step(model, opt, x, y, amp=config.amp)
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        sums["loss"] += float(loss) * len(y)
        sums["correct"] += int((logits.argmax(1) == y).sum())
        sums["seen"] += len(y)
        report(stage, step + 1, steps, loss=float(loss))
    close_pass()
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return history


@dataclass(frozen=True)
class TaskMetrics:
    """Accuracy of T on a test set; per-class accuracy is NaN for classes absent from it."""

    accuracy: float
    per_class_accuracy: tuple[float, ...]
    mean_loss: float
    num_samples: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN per-class entries become None)."""
        per_class = [None if math.isnan(a) else a for a in self.per_class_accuracy]
        return {
            "accuracy": self.accuracy,
            "per_class_accuracy": per_class,
            "mean_loss": self.mean_loss,
            "num_samples": self.num_samples,
        }


@torch.no_grad()
def evaluate_task(
    model: nn.Module,
    source: DataSource,
    num_classes: int,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    amp: bool = True,
) -> TaskMetrics:
    """Accuracy, per-class accuracy and mean cross-entropy of ``model`` on ``source``."""
    if len(source) == 0:
        raise EmptyPoolError("evaluate_task: the test set is empty")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    hits = torch.zeros(num_classes, device=dev, dtype=torch.int64)
    counts = torch.zeros(num_classes, device=dev, dtype=torch.int64)
    for images, labels in epoch_batches(source, batch_size, None, drop_single=False):
        x, y = to_model_input(images, dev), _labels(labels, dev)
        with autocast(dev, amp):
            logits = model(x).float()  # (B, classes)
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        hits += torch.bincount(y[logits.argmax(1) == y], minlength=num_classes)
        counts += torch.bincount(y, minlength=num_classes)
    model.train(was_training)
    n = int(counts.sum().item())
    per_class = (hits.double() / counts.double()).tolist()  # NaN where a class has no sample
    return TaskMetrics(
        accuracy=float(hits.sum().item()) / n,
        per_class_accuracy=tuple(float(a) for a in per_class),
        mean_loss=float(loss_sum.item()) / n,
        num_samples=n,
    )
