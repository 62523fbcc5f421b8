"""Export the sampler (G1 + D1) and the generator (G) to ONNX, with a parity check every time.

Graphs take raw pool pixels (uint8 NHWC) and embed exactly the transforms of
:mod:`dgaal_core.model.data` (``to_model_input``, ``to_uint8_images``); see :mod:`export.names` for
the contract. Every export is followed by ``onnx.checker`` and a parity check of onnxruntime (CPU)
against PyTorch on a given batch of real pool images; a failure removes the file and raises
:class:`~export.errors.ExportParityError`.

Exporter: the TorchScript exporter (``dynamo=False``, opset 17). Export plus checks of the
paper sampler take 0.4-2 s with it against 4-7 s with the dynamo exporter (small models: 0.1 s
against 3-5 s), and both graphs run equally fast under onnxruntime
(``benchmarks/onnx_throughput.py``, "exporters"); ``dynamo=True`` (opset 18) stays available and
tested. torch is pinned < 2.14, where the TorchScript exporter still ships (deprecated).

Export always works on a fresh CPU copy of G and D1 built from the config and loaded from the
state dicts: the caller's modules (maybe on CUDA, maybe in train mode) are never touched, and any
parametrization (e.g. spectral norm) is baked into plain weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from dgaal_core.errors import DgaalError
from dgaal_core.model.config import ModelConfig
from dgaal_core.model.data import to_model_input, to_uint8_images
from dgaal_core.model.networks import LatentDiscriminator, UNetGenerator
from dgaal_core.model.noise import PAPER_SPREAD, noise_range, noise_scales

from . import names
from .errors import ExportParityError, ModelMismatchError
from .metadata import model_metadata, set_metadata
from .runtime import GeneratorSession, SamplerSession, select_lowest

SCORE_ATOL = 1e-5
PIXEL_ATOL = 1
SELECT_FRACTION = 0.1  # parity compares the lowest 10% of the parity batch


class SamplerGraph(nn.Module):
    """uint8 images (B, H, W, C) -> (score (B,), latent (B, z)) with score = D1(G1(x))."""

    def __init__(self, g: UNetGenerator, d1: LatentDiscriminator) -> None:
        super().__init__()
        self.g, self.d1 = g, d1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_input(images)  # (B, C, H, W) float in [-1, 1]
        z = self.g.encode(x)  # (B, z)
        return self.d1(z), z


class GeneratorGraph(nn.Module):
    """uint8 images (B, H, W, C), noise scales (c_b,) -> uint8 images G(x) (B, H, W, C)."""

    def __init__(self, g: UNetGenerator) -> None:
        super().__init__()
        self.g = g

    def forward(self, images: torch.Tensor, noise_scales: torch.Tensor) -> torch.Tensor:
        return to_uint8_images(self.g(to_model_input(images), noise_scales))


def bake_parametrizations(module: nn.Module) -> nn.Module:
    """Replace every parametrization (e.g. spectral norm) by its current plain weight, in place."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            plist: Any = m.parametrizations
            for tensor_name in list(plist.keys()):
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
    return module


def fresh_generator(g: UNetGenerator, config: ModelConfig) -> UNetGenerator:
    """A fresh CPU eval-mode G from ``config`` with ``g``'s weights (parametrizations baked)."""
    fresh = UNetGenerator(config)
    fresh.load_state_dict({k: v.detach().cpu() for k, v in g.state_dict().items()})
    return bake_parametrizations(fresh).eval()  # type: ignore[return-value]


def fresh_d1(d1: LatentDiscriminator, config: ModelConfig) -> LatentDiscriminator:
    """A fresh CPU eval-mode D1 built from ``config`` with ``d1``'s weights."""
    fresh = LatentDiscriminator(config.latent_dim, config.d1_hidden)
    fresh.load_state_dict({k: v.detach().cpu() for k, v in d1.state_dict().items()})
    return bake_parametrizations(fresh).eval()  # type: ignore[return-value]


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    dynamo: bool,
    batched: tuple[str, ...] = (),
) -> None:
    """``torch.onnx.export`` with dgaal's names: a dynamic batch on the contract's tensors
    (:data:`names.DYNAMIC_AXES`) and on those in ``batched``."""
    axes = {k: v for k, v in names.DYNAMIC_AXES.items() if k in inputs + outputs}
    axes |= {k: {0: names.BATCH} for k in batched}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            batch = torch.export.Dim(names.BATCH)
            shapes = {k: ({0: batch} if k in axes else None) for k in inputs}
            torch.onnx.export(
                module, args, str(path), dynamo=True, input_names=list(inputs),
                output_names=list(outputs), dynamic_shapes=shapes, external_data=False,
                opset_version=18, verbose=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                module, args, str(path), dynamo=False, input_names=list(inputs),
                output_names=list(outputs), dynamic_axes=axes, opset_version=names.OPSET,
            )  # fmt: skip


def _finish(path: Path, meta: dict[str, str]) -> None:
    """Write metadata, store as one self-contained file, run the full ONNX checker."""
    model = onnx.load(str(path))
    set_metadata(model, meta)
    model.doc_string = f"dgaal {meta[names.META_KIND]} (see export/names.py for the contract)"
    onnx.save_model(model, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def _example(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images[:2]))


def _parity_error(path: Path, message: str) -> ExportParityError:
    path.unlink(missing_ok=True)
    return ExportParityError(f"{path}: parity check against PyTorch failed: {message}")


@dataclass(frozen=True)
class SamplerParity:
    """How the exported sampler compares with PyTorch on the parity batch."""

    images: int
    score_max_abs_diff: float
    latent_max_abs_diff: float
    selected: int
    same_selection: bool


@dataclass(frozen=True)
class GeneratorParity:
    """How the exported generator compares with PyTorch on the parity batch."""

    images: int
    max_pixel_diff: int
    pixels_off_by_one: float  # share of pixels that differ (by exactly 1)


def _torch_run(graph: nn.Module, images: np.ndarray, *extra: torch.Tensor) -> Any:
    outs = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], 256):
            outs.append(graph(torch.from_numpy(np.ascontiguousarray(images[i : i + 256])), *extra))
    return outs


def check_sampler_parity(
    path: Path, graph: SamplerGraph, images: np.ndarray, score_atol: float = SCORE_ATOL
) -> SamplerParity:
    """Compare onnxruntime (CPU) with ``graph`` on ``images``; raise ExportParityError if off.

    The lowest ``SELECT_FRACTION`` of scores must pick the same ids. Ids may only swap at the
    boundary when their PyTorch scores lie within ``score_atol`` of the last selected score
    (a tie at float precision, which no exporter can resolve the same way).
    """
    outs = _torch_run(graph.eval(), images)
    ref_s = torch.cat([o[0] for o in outs]).numpy()
    ref_z = torch.cat([o[1] for o in outs]).numpy()
    got_s, got_z = SamplerSession(path, provider="cpu").score(images)
    ds = float(np.max(np.abs(got_s.astype(np.float64) - ref_s))) if images.size else 0.0
    dz = float(np.max(np.abs(got_z.astype(np.float64) - ref_z))) if images.size else 0.0
    if not ds <= score_atol:
        raise _parity_error(path, f"score max abs diff {ds:.3g} > {score_atol:g}")
    z_tol = 1e-4 * (1.0 + float(np.abs(ref_z).max(initial=0.0)))
    if not dz <= z_tol:
        raise _parity_error(path, f"latent max abs diff {dz:.3g} > {z_tol:.3g}")
    picked = same_selection(ref_s, got_s, score_atol)
    if isinstance(picked, str):
        raise _parity_error(path, picked)
    return SamplerParity(images.shape[0], ds, dz, *picked)


def same_selection(ref_s: np.ndarray, got_s: np.ndarray, atol: float) -> tuple[int, bool] | str:
    """Whether ``got_s`` picks the lowest ``SELECT_FRACTION`` as ``ref_s`` does: (n, identical),
    or the failure as a message. Ids may only swap at the boundary when their reference scores
    lie within ``atol`` of the last selected score (a tie at float precision)."""
    ids = np.arange(ref_s.size)
    n = max(1, round(SELECT_FRACTION * ids.size)) if ids.size else 0
    want, got = select_lowest(ids, ref_s, n), select_lowest(ids, got_s, n)
    same = set(want.tolist()) == set(got.tolist())
    if not same:
        swapped = np.array(sorted(set(want.tolist()) ^ set(got.tolist())))
        if np.any(np.abs(ref_s[swapped] - ref_s[want[-1]]) > atol):
            return f"the lowest {n} scores select different ids"
    return n, same


def check_generator_parity(
    path: Path, graph: GeneratorGraph, images: np.ndarray, noise_scales: torch.Tensor
) -> GeneratorParity:
    """Compare onnxruntime (CPU) with ``graph`` on ``images``: every pixel within +-1."""
    ref = torch.cat(_torch_run(graph.eval(), images, noise_scales)).numpy()
    got = GeneratorSession(path, provider="cpu").generate(images, noise_scales.numpy())
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    worst = int(diff.max(initial=0))
    if worst > PIXEL_ATOL:
        raise _parity_error(path, f"pixels differ by up to {worst} (allowed {PIXEL_ATOL})")
    return GeneratorParity(images.shape[0], worst, float(np.mean(diff > 0)) if diff.size else 0.0)


def _check_parity_batch(images: np.ndarray, config: ModelConfig) -> None:
    shape = tuple(config.image_shape)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        raise ModelMismatchError(
            f"parity images: expected uint8 [n, {', '.join(map(str, shape))}], "
            f"got {images.dtype} {list(images.shape)}"
        )
    if images.shape[0] < 2:
        raise DgaalError(f"the parity check needs at least 2 pool images, got {images.shape[0]}")


def export_sampler(
    g: UNetGenerator,
    d1: LatentDiscriminator,
    config: ModelConfig,
    path: str | Path,
    parity_images: np.ndarray,
    *,
    round_index: int = 0,
    dynamo: bool = False,
) -> SamplerParity:
    """Write ``sampler.onnx`` for G1 + D1 at ``path``, check it, return its parity report."""
    _check_parity_batch(parity_images, config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g, d1 = fresh_generator(g, config), fresh_d1(d1, config)
    graph = SamplerGraph(g, d1).eval()
    _torch_export(
        graph, (_example(parity_images),), path, names.SAMPLER_INPUTS, names.SAMPLER_OUTPUTS, dynamo
    )
    _finish(path, model_metadata(config, names.KIND_SAMPLER, round_index, g.noise_channels))
    return check_sampler_parity(path, graph, parity_images)


def export_generator(
    g: UNetGenerator,
    config: ModelConfig,
    path: str | Path,
    parity_images: np.ndarray,
    *,
    round_index: int = 0,
    dynamo: bool = False,
    seed: int = 0,
    noise_spread: float = PAPER_SPREAD,
) -> GeneratorParity:
    """Write ``generator.onnx`` for G at ``path``, check it, return its parity report.

    ``noise_spread``: the noise-head scales of generation are drawn in ``[1 - s, 1 + s]``; the
    range goes into the file's metadata, so every caller draws from it."""
    _check_parity_batch(parity_images, config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = fresh_generator(g, config)
    graph = GeneratorGraph(g).eval()
    low, high = noise_range(noise_spread)
    noise = torch.from_numpy(noise_scales(seed, g.noise_channels, low, high))
    _torch_export(
        graph,
        (_example(parity_images), noise),
        path,
        names.GENERATOR_INPUTS,
        names.GENERATOR_OUTPUTS,
        dynamo,
    )
    meta = model_metadata(config, names.KIND_GENERATOR, round_index, g.noise_channels, noise_spread)
    _finish(path, meta)
    return check_generator_parity(path, graph, parity_images, noise)
