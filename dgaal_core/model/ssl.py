"""An encoder for a pool that has none: SimCLR (Chen et al., ICML 2020) on the pool's own images.

``dgaal pool embed POOL --train`` trains :class:`SSLEncoder` here, exports it to ONNX
(:mod:`export.ssl_encoder`) and embeds the pool with it like any other encoder. Two random views
of each image of a batch are pulled together and pushed away from the other 2B - 2 views
(NT-Xent loss, temperature 0.5, a 2-layer projection head that is dropped afterwards).

The views are SimCLR's CIFAR-10 recipe, vectorised in torch: a random resized crop (scale
0.2-1, aspect 3/4-4/3; the padded shift T uses is a weak special case of it), a horizontal flip
for RGB only (as :func:`dgaal_core.model.data.augment`: a mirrored digit is another symbol),
and for RGB colour jitter (brightness, contrast, saturation 0.4, with probability 0.8) and
greyscale (probability 0.2). Crop and flip alone let the loss be solved by colour statistics.

Small enough for a CPU: six 3x3 conv layers (widths w, 2w, 2w, 4w, 4w, 8w; w = 32 by default,
three stride-2), global average pooling, 8w-d embeddings. Measured on the CIFAR-10 subset (README,
``benchmarks/results/ssl_encoder/``). Every random choice (initialisation, batches, views) flows
from ``SSLConfig.seed``; ``steps`` fixes the work, ``minutes`` only caps it (a capped run says so).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgaal_core.model.data import DataSource, sample_batch
from dgaal_core.progress import Progress, silent
from dgaal_core.values import derive_seed

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # the encoder's own normalisation of [0, 1] pixels


@dataclass(frozen=True)
class SSLConfig:
    """How :func:`train_ssl_encoder` trains."""

    steps: int = 1500
    minutes: float | None = None  # stop earlier once this much time has passed
    batch_size: int = 256
    width: int = 32
    temperature: float = 0.5
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.width < 1:
            raise ValueError("SSLConfig: steps >= 1, batch_size >= 2 and width >= 1 are needed")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"SSLConfig: minutes must be > 0, got {self.minutes}")


@dataclass(frozen=True)
class SSLReport:
    """What a training run did."""

    steps: int  # steps taken (fewer than asked when ``minutes`` stopped it)
    epochs: float  # images seen / pool images, per view
    seconds: float
    first_loss: float  # mean NT-Xent over the first and the last tenth of the steps
    last_loss: float
    stopped_by_time: bool


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )  # fmt: skip


class SSLEncoder(nn.Module):
    """uint8 images (B, H, W, C) -> embeddings (B, 8 * width); the normalisation is inside."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.channels, self.dim = channels, 8 * w
        self.net = nn.Sequential(
            _block(channels, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), _block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (B, C, H, W) -> (B, D)."""
        return self.net(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.features((x - PIXEL_MEAN) / PIXEL_STD)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view of each image of ``x`` (float (B, C, H, W) in [0, 1]), normalised."""
    b, c = x.shape[:2]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(b, *shape, generator=g) * (high - low) + low

    area = uniform(0.2, 1.0).sqrt()
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3))).sqrt()
    sx, sy = (area * aspect).clamp(max=1), (area / aspect).clamp(max=1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if c == 3 else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx * flip, sy
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if c == 3:
        on = (uniform(0, 1, 1, 1, 1) < 0.8).float()  # colour jitter with probability 0.8

        def factor() -> torch.Tensor:
            return 1 + uniform(-0.4, 0.4, 1, 1, 1) * on

        x = x * factor()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        grey = _grey(x)
        x = (x - grey) * factor() + grey
        to_grey = (uniform(0, 1, 1, 1, 1) < 0.2).float()
        x = to_grey * _grey(x) + (1 - to_grey) * x
    return (x.clamp(0, 1) - PIXEL_MEAN) / PIXEL_STD


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: view i of z1 should pick view i of z2 among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool), float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_ssl_encoder(
    source: DataSource, config: SSLConfig = SSLConfig(), progress: Progress = silent
) -> tuple[SSLEncoder, SSLReport]:
    """SimCLR on the images of ``source`` (uint8 NHWC); the encoder in eval mode, on CPU."""
    if len(source) < 2:
        raise ValueError("train_ssl_encoder: at least two images are needed")
    sample, _ = source.get(np.arange(1))
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
        torch.manual_seed(derive_seed(config.seed, "ssl", "init"))
        encoder = SSLEncoder(int(sample.shape[-1]), config.width)
        d = encoder.dim
        head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=1e-6)
    rng = np.random.default_rng(derive_seed(config.seed, "ssl", "batches"))
    g = torch.Generator().manual_seed(derive_seed(config.seed, "ssl", "views"))
    batch = min(config.batch_size, len(source))
    losses: list[float] = []
    t0, stopped = time.perf_counter(), False
    encoder.train()
    for step in range(config.steps):
        if config.minutes is not None and time.perf_counter() - t0 > 60 * config.minutes:
            stopped = True
            break
        images, _ = sample_batch(source, batch, rng)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        z1, z2 = head(encoder.features(views(x, g))), head(encoder.features(views(x, g)))
        loss = nt_xent(z1, z2, config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        progress("train encoder", step + 1, config.steps, loss=losses[-1])
    tenth = max(1, len(losses) // 10)
    report = SSLReport(
        steps=len(losses),
        epochs=len(losses) * batch / len(source),
        seconds=time.perf_counter() - t0,
        first_loss=float(np.mean(losses[:tenth])) if losses else math.nan,
        last_loss=float(np.mean(losses[-tenth:])) if losses else math.nan,
        stopped_by_time=stopped,
    )
    return encoder.eval(), report
