"""Helpers shared by the ONNX benchmarks: data, a briefly trained sampler, FLOPs, timing, tables."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported inside the functions: scaling children must not load it
    from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (32, 32, 3)


def digits_rgb(n: int, seed: int = 0) -> np.ndarray:
    """n 32x32x3 uint8 images: scikit-learn's digits upscaled x4, tinted, with pixel noise.

    Real structure (not white noise) so the briefly trained D1 spreads its scores like a real
    sampler does; synthetic so the benchmark needs no download.
    """
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    base = load_digits().images / 16.0  # (1797, 8, 8) in [0, 1]
    pick = base[rng.integers(0, base.shape[0], n)]
    big = np.kron(pick, np.ones((4, 4)))[..., None]  # (n, 32, 32, 1)
    tint = rng.uniform(0.4, 1.0, (n, 1, 1, 3))
    img = big * tint * 255 + rng.normal(0, 8, (n, 32, 32, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def briefly_trained(
    preset_name: str, gan_steps: int, coevolve_steps: int, seed: int = 0, cache: Path | None = None
) -> Any:
    """G and D1 after a few steps of Algorithm 1 and of the D1 co-evolution (Eq. 9) on digits.

    Fresh initialisations score every image ~0.5 within 1e-5 (batch-norm statistics never
    updated, tiny latents), which says nothing about how int8 ranks images; a G1 whose statistics
    have been trained and a D1 that separates a labelled set from the rest do. ``cache``: a folder
    where the trained weights are kept between runs (training is minutes on 2 cores).
    """
    import torch

    from dgaal_core.model.config import preset
    from dgaal_core.model.data import ArraySource
    from dgaal_core.model.networks import LatentDiscriminator, UNetGenerator
    from dgaal_core.model.training import DGAALTrainer
    from export.pipeline import ExportedModels

    run = preset(preset_name, SHAPE, 10, batch_size=32, seed=seed)
    source = f"{preset_name}: {gan_steps} Algorithm-1 steps + {coevolve_steps} D1 co-evolution "
    source += "steps on digits"
    key = f"{preset_name}-{gan_steps}-{coevolve_steps}-{seed}.pt"
    path = None if cache is None else cache / key
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        g = UNetGenerator(run.model)
        d1 = LatentDiscriminator(run.model.latent_dim, run.model.d1_hidden)
        g.load_state_dict(state["g"])
        d1.load_state_dict(state["d1"])
        return ExportedModels(g, d1, run.model, 0, source)
    trainer = DGAALTrainer.create(run, device="cpu")
    x = digits_rgb(2000, seed)
    labelled, unlabelled = ArraySource(x[:200]), ArraySource(x[200:])
    if gan_steps:
        trainer.train_gan(labelled, unlabelled, steps=gan_steps)
    trainer.co_evolve_d1(labelled, unlabelled, steps=coevolve_steps)
    m = trainer.models
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"g": m.g.state_dict(), "d1": m.d1.state_dict()}, path)
    return ExportedModels(m.g, m.d1, run.model, 0, source)


def untrained_sampler(preset_name: str, out: Path) -> Path:
    """``sampler.onnx`` of freshly initialised models (speed does not depend on the weights)."""
    from dgaal_core.model.config import preset
    from dgaal_core.model.networks import build_models
    from export.pipeline import ExportedModels, export_round

    config = preset(preset_name, SHAPE, 10).model
    m = build_models(config, 0)
    models = ExportedModels(m.g, m.d1, config, 0, "untrained")
    return export_round(models, out, digits_rgb(64)).sampler


def count_macs(module: nn.Module, *args: Any) -> int:
    """Multiply-accumulates of one forward pass (Conv2d, ConvTranspose2d, Linear) via hooks."""
    import torch
    from torch import nn

    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out.numel() * k
        elif isinstance(m, nn.ConvTranspose2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.out_channels // m.groups)
            total += inputs[0].numel() * k
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    with torch.inference_mode():
        module(*args)
    for h in handles:
        h.remove()
    return total


def matmul_peak_gflops(threads: int, n: int = 4096, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of a large square matmul in PyTorch (MKL/oneDNN): the practical CPU peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_probe(n: int = 2048) -> tuple[Callable[[], Any], float]:
    """A matmul to run among the variants (same load) and its FLOP count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def interleaved_best(
    fns: dict[str, Callable[[], Any]], repeats: int, min_seconds: float
) -> dict[str, float]:
    """Best wall time per variant, variants run in turn (A B C A B C ...) so shared-machine noise
    hits them alike; at least ``repeats`` rounds and ``min_seconds`` per variant."""
    for fn in fns.values():  # warm-up: allocations, oneDNN primitives, ORT arenas
        fn()
    best = dict.fromkeys(fns, float("inf"))
    spent = dict.fromkeys(fns, 0.0)
    rounds = 0
    while rounds < repeats or min(spent.values()) < min_seconds:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            best[name] = min(best[name], dt)
            spent[name] += dt
        rounds += 1
    return best


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import onnxruntime as ort

    from export.sessions import cpu_model

    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "-"
    return {
        "cpu": cpu_model(),
        "torch": torch_version,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def write_results(stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``benchmarks/results/<stem>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    j.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    m.write_text(markdown, encoding="utf-8")
    return j, m


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
