"""The DGAAL networks: G = G1 + G2 (U-Net generator), D1 (latent MLP), D2 (critic), T (classifier).

All models are tensor-in/tensor-out on float NCHW images in [-1, 1] (see
:func:`dgaal_core.model.data.to_model_input`). No Python control flow depends on tensor values,
and every size is fixed at construction from the configured image shape, so G and G1 + D1
export to ONNX.

Readings of the paper (sections 3.1-3.2) that needed a choice, and why:

- **U-Net depth by image size.** The paper gives no depth. G halves the resolution with stride-2
  3x3 convolutions (out = ceil(n / 2)) while the next size stays >= 4 px, at most ``g_max_down``
  times: 8 -> 4 (1 stage), 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4, 64 -> ... -> 4. Each decoder
  stage is a 3x3 transposed convolution whose ``output_padding`` (0 or 1 per axis) is computed at
  construction so its output matches the skip's size exactly (7 -> 14 -> 28 works); no
  interpolation, no data-dependent shapes.
- **G1 and the "feature matrix" D1 reads.** G1 is the encoder; its latent z (``z_dim``, 32 up to
  32 px and 64 above, as in section 4.1) is a linear map of the flattened bottleneck. G2 adds a
  projection of z back onto the bottleneck, so z is part of the generation path and the G loss
  (Eq. 8) reaches every G1 parameter, while Eq. 4 moves only G1.
- **Noise head.** "1x1 convolution kernels with weights in [0.95, 1.05] that are not updated": a
  full CxC 1x1 convolution with weights near 1 would sum channels and destroy the image, so we read
  it as a per-channel (depthwise) 1x1 convolution, i.e. a scale per bottleneck channel applied
  first in G2. The scales are a buffer drawn at initialisation (used in training) and never train;
  each generation call passes fresh scales (:func:`dgaal_core.model.noise.noise_scales`), as an
  explicit tensor input that ONNX keeps as a graph input. The full-resolution skips bypass the
  bottleneck, so there the head barely moves x_g (mean |x_g - x_s| 0.025 whatever the spread,
  ``benchmarks/generation_balance.py``);
  ``ModelConfig.noise_skips`` also scales each skip's c_i channels by the first c_i scales.
- **Normalisation.** Batch norm in G (pix2pix-style U-Net); per-sample norms (group/instance)
  would remove a global brightness offset, which both reconstruction and D1 need. Training feeds
  labelled and unlabelled images through G1 in one batch, so batch statistics never differ by pool.
- **D1** is the VAAL discriminator: MLP z -> hidden -> hidden -> 1; ``logits`` for a stable BCE,
  ``forward`` returns the probability "labelled".
- **D2** is an SNGAN-style critic: spectral-normalised 3x3 and 4x4/stride-2 convolutions with
  LeakyReLU(0.1), as many stride-2 stages as G, global average pooling, a spectral-normalised
  linear head without bias (a bias cancels in Eq. 6 and would never train) and no sigmoid
  (Wasserstein objective, Eq. 6, Lipschitz via spectral norm, Eq. 7).
- **T** is VGG16 with batch norm and Xavier init (section 4.1), CIFAR variant: 13 convolutions,
  a pooling stage is skipped once the map is 1 px, global average pooling and a small
  ``Linear(c, c) -> ReLU -> Linear(c, classes)`` head without dropout (dropout would draw from the
  global RNG). ``SmallCNN`` is the CPU preset with the same interface.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dgaal_core.model.config import ModelConfig
from dgaal_core.model.noise import noise_range
from dgaal_core.model.projection import EmbeddingProjection
from dgaal_core.values import derive_seed

NOISE_LOW, NOISE_HIGH = noise_range()  # the initial (training) scales: the paper's range

Size = tuple[int, int]


def unet_sizes(height: int, width: int, max_down: int) -> list[Size]:
    """Spatial sizes of the U-Net levels: halve (ceil) while the result stays >= 4 px."""
    sizes = [(height, width)]
    while len(sizes) - 1 < max_down:
        h, w = sizes[-1]
        nh, nw = (h + 1) // 2, (w + 1) // 2
        if min(nh, nw) < 4:
            break
        sizes.append((nh, nw))
    return sizes


def _conv_bn_act(cin: int, cout: int, stride: int = 1, act: str = "relu") -> nn.Sequential:
    activation: nn.Module = nn.LeakyReLU(0.2) if act == "lrelu" else nn.ReLU()
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), activation
    )


class ResBlock(nn.Module):
    """x + conv-bn-relu-conv-bn(x), at constant width and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_act(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # (B, C, h, w)


class Encoder(nn.Module):
    """G1: image -> (skips, bottleneck feature map, latent z)."""

    def __init__(self, in_ch: int, channels: Sequence[int], sizes: Sequence[Size], z_dim: int):
        super().__init__()
        self.stem = _conv_bn_act(in_ch, channels[0], act="lrelu")
        self.downs = nn.ModuleList(
            nn.Sequential(
                _conv_bn_act(channels[i], channels[i + 1], stride=2, act="lrelu"),
                _conv_bn_act(channels[i + 1], channels[i + 1], act="lrelu"),
            )
            for i in range(len(sizes) - 1)
        )
        hb, wb = sizes[-1]
        self.to_z = nn.Linear(channels[-1] * hb * wb, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        h = self.stem(x)  # (B, c0, H, W)
        skips = []
        for down in self.downs:
            skips.append(h)
            h = down(h)  # (B, c_{i+1}, ceil(h/2), ceil(w/2))
        z = self.to_z(h.flatten(1))  # (B, z_dim)
        return skips, h, z


class Decoder(nn.Module):
    """G2: noise head (fixed per-channel 1x1 scale), z injection, residual blocks, up path."""

    noise_weight: torch.Tensor  # (c_b,) buffer

    def __init__(
        self,
        out_ch: int,
        channels: Sequence[int],
        sizes: Sequence[Size],
        z_dim: int,
        res_blocks: int,
        noise_skips: bool = False,
    ) -> None:
        super().__init__()
        cb = channels[-1]
        self.noise_skips = noise_skips
        noise = torch.empty(cb).uniform_(NOISE_LOW, NOISE_HIGH)
        self.register_buffer("noise_weight", noise)  # (c_b,) never trained
        self.z_proj = nn.Linear(z_dim, cb)
        self.res = nn.Sequential(*(ResBlock(cb) for _ in range(res_blocks)))
        self.ups = nn.ModuleList()
        self.merges = nn.ModuleList()
        for i in reversed(range(len(sizes) - 1)):
            (hi, wi), (ho, wo) = sizes[i + 1], sizes[i]
            pad = (ho - (2 * hi - 1), wo - (2 * wi - 1))  # 0 or 1: lands exactly on the skip size
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(
                        channels[i + 1], channels[i], 3, 2, 1, output_padding=pad, bias=False
                    ),
                    nn.BatchNorm2d(channels[i]),
                    nn.ReLU(),
                )
            )
            self.merges.append(_conv_bn_act(2 * channels[i], channels[i]))
        self.out = nn.Conv2d(channels[0], out_ch, 3, 1, 1)

    def forward(
        self,
        skips: list[torch.Tensor],
        bottleneck: torch.Tensor,
        z: torch.Tensor,
        noise_scales: torch.Tensor,
    ) -> torch.Tensor:
        h = bottleneck * noise_scales.view(1, -1, 1, 1)  # depthwise 1x1 conv: (B, c_b, h_b, w_b)
        h = h + self.z_proj(z)[:, :, None, None]
        h = self.res(h)
        for up, merge, skip in zip(self.ups, self.merges, reversed(skips), strict=True):
            if self.noise_skips:  # the first c_i scales (c_i <= c_b) on this level's skip
                skip = skip * noise_scales[: skip.shape[1]].view(1, -1, 1, 1)
            h = merge(torch.cat([up(h), skip], dim=1))  # (B, c_i, h_i, w_i)
        return torch.tanh(self.out(h))  # (B, C, H, W)


class UNetGenerator(nn.Module):
    """G: U-Net image -> image of the same shape; ``g1`` is the encoder, ``g2`` the rest."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, w, c = cfg.image_shape
        sizes = unet_sizes(h, w, cfg.g_max_down)
        chans = [min(cfg.g_channels * 2**i, cfg.g_max_channels) for i in range(len(sizes))]
        self.sizes = sizes
        self.g1 = Encoder(c, chans, sizes, cfg.latent_dim)
        self.g2 = Decoder(c, chans, sizes, cfg.latent_dim, cfg.g_res_blocks, cfg.noise_skips)

    @property
    def noise_channels(self) -> int:
        """Number of bottleneck channels the noise head scales."""
        return int(self.g2.noise_weight.numel())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """G1 only: images (B, C, H, W) -> latent z (B, z_dim)."""
        return self.g1(x)[2]

    def forward(self, x: torch.Tensor, noise_scales: torch.Tensor | None = None) -> torch.Tensor:
        """x_g = G(x) with the given noise scales (c_b,), or the fixed training ones if None."""
        skips, bottleneck, z = self.g1(x)
        scales = self.g2.noise_weight if noise_scales is None else noise_scales
        return self.g2(skips, bottleneck, z, scales)


class LatentDiscriminator(nn.Module):
    """D1: MLP on z; ``forward`` is the probability that the image is labelled."""

    def __init__(self, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) -> (B,) logits."""
        return self.net(z).squeeze(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) -> (B,) probability "labelled"."""
        return torch.sigmoid(self.logits(z))


class Critic(nn.Module):
    """D2: spectral-norm convolutional critic, image (B, C, H, W) -> score (B,), no sigmoid."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, w, c = cfg.image_shape
        n_down = len(unet_sizes(h, w, cfg.g_max_down)) - 1
        chans = [min(cfg.d2_channels * 2**i, cfg.d2_max_channels) for i in range(n_down + 1)]
        layers: list[nn.Module] = [
            spectral_norm(nn.Conv2d(c, chans[0], 3, 1, 1)),
            nn.LeakyReLU(0.1),
        ]
        for i in range(n_down):
            layers += [
                spectral_norm(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1)), nn.LeakyReLU(0.1),
                spectral_norm(nn.Conv2d(chans[i + 1], chans[i + 1], 3, 1, 1)), nn.LeakyReLU(0.1),
            ]  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(chans[-1], 1, bias=False))  # a bias cancels in Eq. 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))  # (B, c)
        return self.head(h).squeeze(1)  # (B,)


VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
SMALL_LAYERS: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, "M")


class ConvClassifier(nn.Module):
    """Conv-BN-ReLU stack ("M" = 2x2 max pool, skipped once the map is 1 px), GAP, small head."""

    def __init__(
        self,
        layers: Sequence[int | str],
        width_scale: float,
        image_shape: Sequence[int],
        classes: int,
    ) -> None:
        super().__init__()
        h, w, cin = image_shape
        body: list[nn.Module] = []
        for item in layers:
            if item == "M":
                if min(h, w) >= 2:
                    body.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            cout = max(1, round(int(item) * width_scale))
            body.append(_conv_bn_act(cin, cout))
            cin = cout
        self.body = nn.Sequential(*body)
        self.fc = nn.Sequential(nn.Linear(cin, cin), nn.ReLU())
        self.classifier = nn.Linear(cin, classes)
        self.embedding_dim = cin
        for m in self.modules():  # Xavier init (section 4.1)
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (B, embedding_dim), e.g. for coreset selection."""
        h = self.body(x).mean(dim=(2, 3))  # (B, c)
        return self.fc(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> class logits (B, classes)."""
        return self.classifier(self.features(x))


class VGG16BN(ConvClassifier):
    """VGG16 with batch norm, CIFAR variant; ``width=64`` is the standard channel count."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, width: int = 64) -> None:
        super().__init__(VGG16_LAYERS, width / 64, image_shape, num_classes)


class SmallCNN(ConvClassifier):
    """Five-layer CNN for CPUs; ``width=16`` gives 16-16-32-32-64 channels."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, width: int = 16) -> None:
        super().__init__(SMALL_LAYERS, width / 16, image_shape, num_classes)


@dataclass
class Models:
    """The four networks of one DGAAL run."""

    g: UNetGenerator
    d1: LatentDiscriminator
    d2: Critic
    task: ConvClassifier
    proj: EmbeddingProjection | None = None  # D1's input when it reads embeddings, else None

    def to(self, device: torch.device | str) -> Models:
        """Move all four to ``device`` (in place) and return self."""
        for m in self.modules():
            m.to(device)
        return self

    def modules(self) -> Iterator[nn.Module]:
        """g, d1, d2, task (and proj, when D1 reads embeddings)."""
        yield from (self.g, self.d1, self.d2, self.task)
        if self.proj is not None:
            yield self.proj


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for model construction, restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_task_model(cfg: ModelConfig, seed: int) -> ConvClassifier:
    """A freshly initialised T on CPU, a pure function of ``cfg`` and ``seed``."""
    with _seeded(derive_seed(seed, "task")):
        if cfg.task_kind == "vgg16":
            return VGG16BN(cfg.image_shape, cfg.num_classes, cfg.task_width)
        return SmallCNN(cfg.image_shape, cfg.num_classes, cfg.task_width)


def build_models(cfg: ModelConfig, seed: int) -> Models:
    """G, D1, D2 and T on CPU, each initialised from its own stream derived from ``seed``."""
    with _seeded(derive_seed(seed, "g")):
        g = UNetGenerator(cfg)
    with _seeded(derive_seed(seed, "d1")):
        d1 = LatentDiscriminator(cfg.latent_dim, cfg.d1_hidden)
    with _seeded(derive_seed(seed, "d2")):
        d2 = Critic(cfg)
    proj = None
    if cfg.embedding_dim:
        with _seeded(derive_seed(seed, "proj")):
            proj = EmbeddingProjection.for_config(cfg)
    return Models(g, d1, d2, build_task_model(cfg, seed), proj)
