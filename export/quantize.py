"""Reduced-precision variants of exported models: int8 sampler (CPUs) and fp16 models (GPUs).

Both are judged by what matters downstream, the selection. The int8 sampler is measured on pool
images against fp32: the lowest-N ids (N = ``select_fraction`` of the images) must agree on at
least ``min_agreement`` of them. If int8 alone passes, it is kept in "direct" mode; if only int8
followed by fp32 rescoring of its lowest ``3 * select_fraction`` passes, it is kept in "cascade"
mode (:mod:`export.cascade`, recorded in its metadata); otherwise it is deleted and fp32 stays.

int8 is onnxruntime's static QDQ quantization (activations uint8, weights int8 per channel,
MinMax calibration on pool images). Only the convolutions are quantized: the latent projection
and the D1 head (a few Gemm ops, a negligible share of the FLOPs) stay fp32, so the score keeps
its resolution. fp16 uses onnxruntime.transformers' converter with fp32/uint8 inputs and outputs
kept, so the runtime feeds it the same arrays.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import names
from .cascade import cascade_scores
from .metadata import set_metadata, update_metadata
from .runtime import GeneratorSession, SamplerSession, select_lowest

FP16_SCORE_ATOL = 1e-2
FP16_PIXEL_ATOL = 4


def selection_agreement(reference: np.ndarray, candidate: np.ndarray, n: int) -> float:
    """Share of the ``n`` lowest-``reference`` ids that ``candidate`` also puts in its lowest n."""
    ids = np.arange(reference.shape[0])
    n = max(1, min(int(n), ids.size))
    a, b = select_lowest(ids, reference, n), select_lowest(ids, candidate, n)
    return len(set(a.tolist()) & set(b.tolist())) / n


@dataclass(frozen=True)
class Int8Report:
    """Outcome of int8 quantization: ``path`` is None when refused.

    ``mode`` is "direct" (int8 scores select like fp32), "cascade" (only with fp32 rescoring of
    the lowest ``rescore_fraction``, see :mod:`export.cascade`) or None (refused).
    """

    mode: str | None
    agreement: float
    cascade_agreement: float
    rescore_fraction: float
    selected: int
    images: int
    path: Path | None
    message: str

    @property
    def accepted(self) -> bool:
        """Whether an int8 sampler was kept."""
        return self.path is not None


class _Calibration:
    """onnxruntime CalibrationDataReader over uint8 pool images in batches of 64."""

    def __init__(self, images: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            {names.IMAGES: images[i : i + 64]} for i in range(0, images.shape[0], 64)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - single pass is enough for MinMax
        raise NotImplementedError


def quantize_sampler_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: np.ndarray,
    agreement_images: np.ndarray,
    *,
    select_fraction: float = 0.05,
    min_agreement: float = 0.99,
) -> Int8Report:
    """Quantize ``sampler.onnx`` to int8 QDQ; keep it only if the selection agrees with fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="dgaal-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(
            str(pre),
            str(out_path),
            _Calibration(calibration_images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    model = onnx.load(str(out_path))
    base = onnx.load(str(fp32_path), load_external_data=False)
    set_metadata(model, {names.META_PRECISION: "int8"}, base=base)
    onnx.save_model(model, str(out_path), save_as_external_data=False)
    onnx.checker.check_model(str(out_path), full_check=True)

    ref, _ = SamplerSession(fp32_path, provider="cpu").score(agreement_images)
    got, _ = SamplerSession(out_path, provider="cpu", rescore=False).score(agreement_images)
    m = agreement_images.shape[0]
    n = max(1, round(select_fraction * m))
    agreement = selection_agreement(ref, got, n)
    rescore = min(1.0, 3 * select_fraction)
    cascade = selection_agreement(ref, cascade_scores(got, ref, rescore), n)
    mode = None
    if agreement >= min_agreement:
        mode = "direct"
    elif cascade >= min_agreement:
        mode = "cascade"
    head = f"lowest-{n} selection on {m} pool images"
    if mode is None:
        out_path.unlink(missing_ok=True)
        msg = (
            f"int8 sampler refused: its {head} agrees with fp32 on {agreement:.1%} of ids, "
            f"{cascade:.1%} with fp32 rescoring of the lowest {rescore:.0%} "
            f"(< {min_agreement:.0%}); keeping the fp32 sampler"
        )
        return Int8Report(None, agreement, cascade, rescore, n, m, None, msg)
    agreements = {"direct": agreement, "cascade": cascade, "n": n}
    update_metadata(out_path, {
        names.META_INT8_MODE: mode,
        names.META_RESCORE_FRACTION: str(rescore),
        names.META_INT8_AGREEMENT: json.dumps(agreements),
    })  # fmt: skip
    if mode == "direct":
        msg = f"int8 sampler accepted: its {head} agrees with fp32 on {agreement:.1%} of ids"
    else:
        msg = (
            f"int8 sampler accepted with fp32 rescoring of the lowest {rescore:.0%}: alone its "
            f"{head} agrees with fp32 on {agreement:.1%} of ids, cascaded on {cascade:.1%}"
        )
    return Int8Report(mode, agreement, cascade, rescore, n, m, out_path, msg)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes topologically (the fp16 converter appends input casts at the end)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a dangling input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(
    fp32_path: str | Path, out_path: str | Path, images: np.ndarray, noise: np.ndarray | None
) -> tuple[Path, float]:
    """fp16 copy of an exported model (same inputs/outputs), checked against fp32 on ``images``.

    Returns the path and the worst difference (score, or pixels for the generator). Raises
    ValueError when it is beyond tolerance (the file is removed).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    half = convert_float_to_float16(model, keep_io_types=True)
    _toposort(half.graph)
    set_metadata(half, {names.META_PRECISION: "fp16"}, base=model)
    onnx.save_model(half, str(out_path), save_as_external_data=False)
    onnx.checker.check_model(str(out_path), full_check=True)
    if noise is None:
        ref, _ = SamplerSession(fp32_path, provider="cpu").score(images)
        got, _ = SamplerSession(out_path, provider="cpu", rescore=False).score(images)
        worst, tol = float(np.max(np.abs(ref - got))), FP16_SCORE_ATOL
    else:
        a = GeneratorSession(fp32_path, provider="cpu").generate(images, noise)
        b = GeneratorSession(out_path, provider="cpu").generate(images, noise)
        worst, tol = float(np.max(np.abs(a.astype(np.int16) - b))), FP16_PIXEL_ATOL
    if worst > tol:
        out_path.unlink(missing_ok=True)
        raise ValueError(f"{out_path}: fp16 differs from fp32 by {worst:.3g} (> {tol:g})")
    return out_path, worst
