"""Algorithm 1, co-evolution, the task model and checkpoints, on tiny synthetic 8x8 data (CPU)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dgaal_core.errors import EmptyPoolError
from dgaal_core.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    task_model_from_checkpoint,
    trainer_from_checkpoint,
)
from dgaal_core.model.config import RunConfig, preset
from dgaal_core.model.data import ArraySource, augment, sample_union, to_model_input
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.task import evaluate_task, train_task
from dgaal_core.model.training import DGAALTrainer, resolve_device


def blobs(
    n: int, seed: int, *, size: int = 8, channels: int = 1, offset: float = 0.0
) -> np.ndarray:
    """Digit-like uint8 NHWC images: three soft blobs each, optionally brightened."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0, size, (2, n, 3, 1, 1))
    img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0).sum(1)
    img = img / img.max(axis=(1, 2), keepdims=True) * (1 - offset) + offset
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], channels, axis=3)


def small_run(**train: object) -> RunConfig:
    return preset("small", (8, 8, 1), 10, batch_size=16, **train)


@pytest.fixture
def pools() -> tuple[ArraySource, ArraySource]:
    return ArraySource(blobs(40, 1)), ArraySource(blobs(120, 2))


def _nonzero_grads(module: torch.nn.Module) -> dict[str, bool]:
    return {
        n: p.grad is not None and bool(p.grad.abs().sum() > 0) and bool(p.grad.isfinite().all())
        for n, p in module.named_parameters()
    }


# --- gradients reach exactly the parameters each step updates ---


def test_each_step_updates_its_parameters_only() -> None:
    trainer = DGAALTrainer.create(small_run(), "cpu")
    g, d1, d2 = trainer.models.g, trainer.models.d1, trainer.models.d2
    x_l = to_model_input(blobs(16, 1))
    x_u = to_model_input(blobs(16, 2))

    trainer.step_g1(x_l, x_u)
    assert all(_nonzero_grads(g.g1).values())
    assert all(p.grad is None for p in g.g2.parameters())
    assert all(p.grad is None for p in d1.parameters())

    trainer.step_d1(x_l, x_u)
    assert all(_nonzero_grads(d1).values())

    _, x_g = trainer.step_g(torch.cat([x_l, x_u]))
    assert all(_nonzero_grads(g).values()), [n for n, ok in _nonzero_grads(g).items() if not ok]
    assert all(p.grad is None for p in d2.parameters())

    trainer.step_d2(torch.cat([x_l, x_u]), x_g)
    assert all(_nonzero_grads(d2).values())


def test_task_step_reaches_every_parameter() -> None:
    for kind in ("small", "vgg16"):
        cfg = preset("small", (8, 8, 1), 10).model
        cfg = type(cfg).from_dict({**cfg.to_dict(), "task_kind": kind, "task_width": 8})
        model = build_task_model(cfg, 0)
        source = ArraySource(blobs(16, 3), np.arange(16) % 10)
        train_task(
            model, source, small_run().train, np.random.default_rng(0), epochs=1, device="cpu"
        )
        grads = _nonzero_grads(model)
        assert all(grads.values()), (kind, [n for n, ok in grads.items() if not ok])


def test_noise_head_never_changes(pools: tuple[ArraySource, ArraySource]) -> None:
    trainer = DGAALTrainer.create(small_run(), "cpu")
    before = trainer.models.g.g2.noise_weight.clone()
    trainer.train_gan(*pools, steps=5)
    assert torch.equal(before, trainer.models.g.g2.noise_weight)
    assert not trainer.models.g.g2.noise_weight.requires_grad


# --- learning ---


def _reconstruction_mse(trainer: DGAALTrainer, x: torch.Tensor) -> float:
    g = trainer.models.g.eval()
    with torch.no_grad():
        mse = float(((g(x) - x) ** 2).mean())
    g.train()
    return mse


@pytest.mark.slow
def test_algorithm1_lowers_reconstruction_error(pools: tuple[ArraySource, ArraySource]) -> None:
    # the paper's lambda = 0.1 with Eq. 5 in pixel values (see the losses module's notes)
    trainer = DGAALTrainer.create(small_run(), "cpu")
    x = to_model_input(blobs(64, 9))
    before = _reconstruction_mse(trainer, x)
    history = trainer.train_gan(*pools, steps=150)
    after = _reconstruction_mse(trainer, x)
    assert after < before / 3, (before, after)
    assert set(history) >= {"g1", "d1", "g", "g_adv", "pmse", "d2"}
    assert all(len(v) == 150 and np.isfinite(v).all() for v in history.values())


def test_d1_learns_an_easy_labelled_unlabelled_split() -> None:
    # Algorithm 1 first (G1 fights D1 there, Eq. 4), then D1-only co-evolution (Eq. 9) as a round
    # does it; D1 is probed as the sampler uses it, G1 and D1 in eval mode on unseen images.
    bright, dark = ArraySource(blobs(64, 4, offset=0.6)), ArraySource(blobs(64, 5))
    trainer = DGAALTrainer.create(small_run(), "cpu")
    trainer.train_gan(bright, dark, steps=25)
    trainer.co_evolve_d1(bright, dark, steps=40)
    g, d1 = trainer.models.g.eval(), trainer.models.d1.eval()
    with torch.no_grad():
        p_bright = d1(g.encode(to_model_input(blobs(64, 6, offset=0.6))))
        p_dark = d1(g.encode(to_model_input(blobs(64, 7))))
    auc = float((p_bright[:, None] > p_dark[None, :]).float().mean())
    gap = float(p_bright.mean() - p_dark.mean())
    assert auc > 0.95 and gap > 0.5, (auc, gap)


def test_task_model_learns_and_evaluates() -> None:
    images = np.concatenate([blobs(48, 10, offset=0.6), blobs(48, 11)])
    labels = np.repeat([1, 0], 48)
    run = small_run()
    model = build_task_model(run.model, 0)
    history = train_task(
        model, ArraySource(images, labels), run.train, np.random.default_rng(0), epochs=8
    )
    assert len(history["loss"]) == 8
    test = ArraySource(
        np.concatenate([blobs(21, 12, offset=0.6), blobs(20, 13)]), np.repeat([1, 0], [21, 20])
    )
    metrics = evaluate_task(model, test, num_classes=10, device="cpu")
    assert metrics.num_samples == 41 and metrics.accuracy > 0.9
    assert metrics.per_class_accuracy[0] > 0.8 and metrics.per_class_accuracy[1] > 0.8
    assert (
        np.isnan(metrics.per_class_accuracy[5])
        and metrics.to_dict()["per_class_accuracy"][5] is None
    )
    assert metrics.mean_loss > 0


# --- reproducibility and checkpoints ---


def _states_equal(a: DGAALTrainer, b: DGAALTrainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["step"] == sb["step"] and sa["rng"]["numpy"] == sb["rng"]["numpy"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    for group in ("models", "optimizers"):
        for name in sa[group]:
            flat_a, flat_b = _flatten(sa[group][name]), _flatten(sb[group][name])
            assert flat_a.keys() == flat_b.keys()
            for key, va in flat_a.items():
                vb = flat_b[key]
                same = (
                    torch.equal(va, vb)
                    if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
                    else va == vb
                )
                assert same, (group, name, key)


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}/{k}")
        return out
    if isinstance(tree, list):
        return _flatten(dict(enumerate(tree)), prefix)
    return {prefix: tree}


def test_same_seed_same_training(pools: tuple[ArraySource, ArraySource]) -> None:
    a, b = DGAALTrainer.create(small_run(), "cpu"), DGAALTrainer.create(small_run(), "cpu")
    a.train_gan(*pools, steps=4)
    b.train_gan(*pools, steps=4)
    _states_equal(a, b)
    c = DGAALTrainer.create(small_run(seed=1), "cpu")
    c.train_gan(*pools, steps=4)
    assert not torch.equal(a.models.g.g2.out.weight, c.models.g.g2.out.weight)


def test_resume_is_bit_exact(tmp_path: Path, pools: tuple[ArraySource, ArraySource]) -> None:
    global_state = torch.get_rng_state()
    straight = DGAALTrainer.create(small_run(), "cpu")
    straight.train_gan(*pools, steps=6)
    straight.co_evolve_d1(*pools, steps=2)

    first = DGAALTrainer.create(small_run(), "cpu")
    first.train_gan(*pools, steps=3)
    task = build_task_model(first.model_config, 0)
    path = save_checkpoint(tmp_path / "round-1" / "checkpoint.pt", first, task=task, round_index=1)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left

    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["round"] == 1 and any(k.endswith("_u") for k in raw["models"]["d2"])
    resumed = trainer_from_checkpoint(load_checkpoint(path), device="cpu")
    assert resumed.step == 3
    resumed.train_gan(*pools, steps=3)
    resumed.co_evolve_d1(*pools, steps=2)
    _states_equal(straight, resumed)
    assert torch.equal(global_state, torch.get_rng_state())

    restored = task_model_from_checkpoint(raw)
    assert restored is not None
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in restored.state_dict().items())


def test_warm_start_keeps_weights_but_takes_fresh_streams(
    tmp_path: Path, pools: tuple[ArraySource, ArraySource]
) -> None:
    trainer = DGAALTrainer.create(small_run(), "cpu")
    trainer.train_gan(*pools, steps=2)
    path = save_checkpoint(tmp_path / "c.pt", trainer)
    warm = trainer_from_checkpoint(
        load_checkpoint(path), train_config=small_run(seed=7).train, rng=False
    )
    assert warm.step == 0 and warm.config.seed == 7
    assert torch.equal(warm.models.g.g2.out.weight, trainer.models.g.g2.out.weight)


def test_bad_checkpoints_raise_named_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(CheckpointError, match="not a dgaal checkpoint"):
        load_checkpoint(other)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Path("x"), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)


# --- data plumbing ---


def test_empty_pools_are_refused(pools: tuple[ArraySource, ArraySource]) -> None:
    trainer = DGAALTrainer.create(small_run(), "cpu")
    empty = ArraySource(np.zeros((0, 8, 8, 1), np.uint8))
    with pytest.raises(EmptyPoolError, match="0 labelled"):
        trainer.train_gan(empty, pools[1], steps=1)


def test_union_sampling_and_augmentation_are_seeded() -> None:
    a, b = (
        ArraySource(np.zeros((10, 8, 8, 3), np.uint8)),
        ArraySource(np.full((30, 8, 8, 3), 255, np.uint8)),
    )
    batch = sample_union((a, b), 400, np.random.default_rng(0))
    assert batch.shape == (400, 8, 8, 3) and 0.15 < (batch[:, 0, 0, 0] == 0).mean() < 0.35
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    one = augment(images, np.random.default_rng(2))
    assert one.shape == images.shape and one.dtype == np.uint8
    assert np.array_equal(one, augment(images, np.random.default_rng(2)))
    gray = augment(
        np.tile(np.arange(8, dtype=np.uint8), (4, 8, 1))[..., None], np.random.default_rng(3)
    )
    rows = gray[:, 4, :, 0].astype(int)  # crop shifts but never mirrors 1-channel images
    assert all((np.diff(r[r > 0]) > 0).all() for r in rows)


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_task_step_budget_grows_with_the_labelled_set_within_its_bounds() -> None:
    from dgaal_core.model.config import TrainConfig

    cfg = TrainConfig(batch_size=32, task_epochs=30, task_min_steps=1000, task_max_steps=4000)
    assert cfg.num_task_steps(72) == 1000  # 30 epochs would be only 90 steps
    assert cfg.num_task_steps(3200) == 3000
    assert cfg.num_task_steps(10_000) == 4000
    assert TrainConfig(batch_size=32, task_epochs=2).num_task_steps(64) == 4


def test_task_learning_rate_warms_up_then_decays_to_zero() -> None:
    from dgaal_core.model.task import warmup_cosine

    f = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert np.all(np.diff(f[9:]) <= 0)  # monotone after the warm-up
    assert f[-1] < 0.01 and warmup_cosine(0, 10, 0.0) == 1.0


def test_train_task_runs_exactly_its_step_budget() -> None:
    run = small_run()
    model = build_task_model(run.model, 0)
    source = ArraySource(blobs(40, 3), np.arange(40) % 10)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1))
    history = train_task(model, source, run.train, np.random.default_rng(0), steps=7)
    per_pass = -(-40 // run.train.batch_size)
    assert len(steps) == 7 and len(history["loss"]) == -(-7 // per_pass)  # one entry per pass


def test_x_r_comes_from_the_real_source_when_one_is_given(
    pools: tuple[ArraySource, ArraySource],
) -> None:
    asked: list[int] = []

    class Counting(ArraySource):
        def get(self, indices: np.ndarray):  # type: ignore[override]
            asked.append(len(indices))
            return super().get(indices)

    real = Counting(blobs(20, 9))
    trainer = DGAALTrainer.create(small_run(), "cpu")
    trainer.train_gan(*pools, steps=3, real=real)
    assert asked == [trainer.config.batch_size] * 3  # one x_r batch per iteration
