"""Configs, model shapes, the noise head, seeding and the losses (all CPU, tiny sizes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dgaal_core.model import losses
from dgaal_core.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_hash,
    preset,
)
from dgaal_core.model.data import to_model_input, to_uint8_images
from dgaal_core.model.networks import (
    NOISE_HIGH,
    NOISE_LOW,
    VGG16BN,
    SmallCNN,
    build_models,
    build_task_model,
    unet_sizes,
)
from dgaal_core.model.noise import noise_range, noise_scales
from dgaal_core.values import derive_seed

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3), (28, 20, 3)]


def _images(shape: tuple[int, int, int], batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w, c = shape
    return torch.rand(batch, c, h, w, generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]


# --- configs ---


def test_config_round_trips_through_plain_json() -> None:
    run = preset("paper", (32, 32, 3), 10)
    data = json.loads(json.dumps(run.to_dict()))
    assert RunConfig.from_dict(data) == run
    assert config_hash(run) == config_hash(RunConfig.from_dict(data))
    assert config_hash(run) != config_hash(preset("paper", (32, 32, 3), 100))


@pytest.mark.parametrize(
    ("shape", "z_dim"), [((8, 8, 1), 32), ((32, 32, 3), 32), ((64, 64, 3), 64)]
)
def test_z_dim_defaults_to_paper_values(shape: tuple[int, int, int], z_dim: int) -> None:
    assert ModelConfig(image_shape=shape, num_classes=10).z_dim == z_dim
    assert ModelConfig(image_shape=shape, num_classes=10, z_dim=7).z_dim == 7


def test_paper_preset_carries_paper_hyperparameters() -> None:
    run = preset("paper", (32, 32, 3), 10)
    t = run.train
    assert (t.lr_g1, t.lr_d1, t.lr_g, t.lr_d2, t.lr_t) == (1e-3, 1e-3, 3e-3, 3e-3, 3e-3)
    assert t.betas == (0.9, 0.99) and t.batch_size == 64 and t.pmse_weight == 0.1
    assert run.model.task_kind == "vgg16" and run.model.task_width == 64


def test_bad_config_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.betas"):
        TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ConfigError, match=r"ModelConfig\.image_shape"):
        ModelConfig(image_shape=(2, 2, 1), num_classes=10)
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="preset"):
        preset("huge", (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="lr_t"):
        preset("small", (8, 8, 1), 10, lr_t=-1.0)


def test_derive_seed_is_stable_and_separates_streams() -> None:
    assert derive_seed(0, "g") == derive_seed(0, "g")
    assert len({derive_seed(0, "g"), derive_seed(0, "d1"), derive_seed(1, "g")}) == 3


# --- shapes ---


@pytest.mark.parametrize(
    ("size", "expected"),
    [(8, [8, 4]), (28, [28, 14, 7, 4]), (32, [32, 16, 8, 4]), (64, [64, 32, 16, 8, 4])],
)
def test_unet_depth_follows_image_size(size: int, expected: list[int]) -> None:
    assert [h for h, _ in unet_sizes(size, size, 4)] == expected


@pytest.mark.parametrize("shape", SHAPES)
def test_all_models_map_shapes(shape: tuple[int, int, int]) -> None:
    cfg = preset("small", shape, 10).model
    models = build_models(cfg, seed=0)
    x = _images(shape)
    with torch.no_grad():
        x_g = models.g(x)
        z = models.g.encode(x)
        p = models.d1(z)
        f = models.d2(x)
        logits = models.task(x)
        emb = models.task.features(x)
    assert x_g.shape == x.shape and x_g.abs().max() <= 1.0
    assert z.shape == (3, cfg.latent_dim)
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    assert f.shape == (3,)
    assert logits.shape == (3, 10) and emb.shape == (3, models.task.embedding_dim)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_vgg16_adapts_to_small_inputs(shape: tuple[int, int, int]) -> None:
    model = VGG16BN(shape, num_classes=5, width=8).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    with torch.no_grad():
        assert model(_images(shape, batch=2)).shape == (2, 5)
    assert isinstance(build_task_model(preset("small", shape, 5).model, 0), SmallCNN)


# --- noise head ---


def test_noise_head_is_a_fixed_buffer_in_range() -> None:
    g = build_models(preset("small", (8, 8, 1), 10).model, seed=0).g
    assert "g2.noise_weight" in dict(g.named_buffers())
    assert all("noise" not in name for name, _ in g.named_parameters())
    w = g.g2.noise_weight
    assert not w.requires_grad and bool(((w >= NOISE_LOW) & (w <= NOISE_HIGH)).all())


def test_noise_scales_come_from_the_seed_in_the_range_asked() -> None:
    g = build_models(preset("small", (8, 8, 1), 10).model, seed=0).g.eval()
    n = g.noise_channels
    a = noise_scales(5, n, NOISE_LOW, NOISE_HIGH)
    b = noise_scales(np.random.default_rng(5), n, NOISE_LOW, NOISE_HIGH)
    c = noise_scales(6, n, NOISE_LOW, NOISE_HIGH)
    assert a.shape == (n,) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, c) and bool(((a >= NOISE_LOW) & (a < NOISE_HIGH)).all())
    wide = noise_scales(5, n, *noise_range(0.2))
    assert wide.min() < NOISE_LOW or wide.max() > NOISE_HIGH  # the spread reaches the draw
    x = _images((8, 8, 1))
    with torch.no_grad():
        assert torch.equal(g(x), g(x, g.g2.noise_weight))
        assert not torch.equal(g(x, torch.from_numpy(a)), g(x, torch.from_numpy(c)))


# --- seeding ---


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    cfg = preset("small", (8, 8, 1), 10).model
    before = torch.get_rng_state()
    a, b, c = build_models(cfg, 3), build_models(cfg, 3), build_models(cfg, 4)
    assert torch.equal(before, torch.get_rng_state())
    for ma, mb, mc in zip(a.modules(), b.modules(), c.modules(), strict=True):
        sa, sb, sc = ma.state_dict(), mb.state_dict(), mc.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


# --- data transform ---


def test_model_input_transform_round_trips() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    x = to_model_input(images)
    assert x.shape == (4, 3, 5, 6) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.array_equal(to_uint8_images(x).numpy(), images)


# --- losses ---


def test_d1_and_g1_losses_follow_eq4() -> None:
    big = torch.full((4,), 20.0)
    assert losses.d1_loss(big, -big) < 1e-6  # D1 perfect: labelled -> 1, unlabelled -> 0
    assert math.isclose(losses.g1_loss(big, -big).item(), 20.0, rel_tol=1e-4)  # U called labelled
    assert losses.g1_loss(big, big) < 1e-6
    zero = torch.zeros(4)
    assert math.isclose(losses.d1_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)


def test_wgan_and_total_generator_losses_follow_eq6_and_eq8() -> None:
    f_real, f_fake = torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5])
    assert losses.critic_loss(f_real, f_fake).item() == -2.0
    assert losses.generator_adv_loss(f_fake).item() == 0.0
    x_r, x_g = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    total, adv, pmse = losses.generator_loss(f_fake + 1, x_g, x_r, pmse_weight=0.1)
    assert pmse.item() == 127.5**2 and adv.item() == -1.0  # Eq. 5 in pixel values (0..255)
    assert math.isclose(total.item(), -1.0 + 0.1 * 127.5**2, rel_tol=1e-6)
    assert losses.task_loss(torch.tensor([[10.0, -10.0]]), torch.tensor([0])) < 1e-6
