"""A Triton Inference Server model repository for the exported sampler and generator (no torch).

Layout::

    DIR/dgaal_sampler/config.pbtxt      platform onnxruntime_onnx, dynamic batching
    DIR/dgaal_sampler/1/model.onnx
    DIR/dgaal_generator/config.pbtxt    max_batch_size 0 (see below)
    DIR/dgaal_generator/1/model.onnx

Shapes come from the models' dgaal metadata. The sampler batches across requests: every input and
output has the batch as its first axis, so dims exclude it (``score`` is [batch] in the graph, so
Triton sees dims [1] reshaped to []). The generator also takes ``noise_scales`` [c_b], shared by
the whole call and without a batch axis; Triton can only batch models whose every input is
batched, so the generator is served with ``max_batch_size: 0`` and explicit [-1, H, W, C] dims:
one request = one generation call with its own noise draw.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from . import names


def _meta(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _dims(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor(name: str, dtype: str, dims: list[int], reshape: list[int] | None = None) -> str:
    extra = f"\n    reshape: {{ shape: {_dims(reshape)} }}" if reshape is not None else ""
    body = f'    name: "{name}"\n    data_type: {dtype}\n    dims: {_dims(dims)}{extra}'
    return "  {\n" + body + "\n  }"


def sampler_config(image_shape: list[int], z_dim: int, max_batch_size: int) -> str:
    """config.pbtxt of the sampler: dynamic batching, dims without the batch axis."""
    delay = 2000  # microseconds a request may wait for others to fill a batch
    return "\n".join(
        [
            f'name: "{names.TRITON_SAMPLER}"',
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {max_batch_size}",
            f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}",
            "input [\n" + _tensor(names.IMAGES, "TYPE_UINT8", image_shape) + "\n]",
            "output [\n"
            + _tensor(names.SCORE, "TYPE_FP32", [1], reshape=[])
            + ",\n"
            + _tensor(names.LATENT, "TYPE_FP32", [z_dim])
            + "\n]",
            "",
        ]
    )


def generator_config(image_shape: list[int], noise_channels: int) -> str:
    """config.pbtxt of the generator: no Triton batching (noise_scales has no batch axis)."""
    return "\n".join(
        [
            f'name: "{names.TRITON_GENERATOR}"',
            'platform: "onnxruntime_onnx"',
            "max_batch_size: 0",
            "input [\n"
            + _tensor(names.IMAGES, "TYPE_UINT8", [-1, *image_shape])
            + ",\n"
            + _tensor(names.NOISE_SCALES, "TYPE_FP32", [noise_channels])
            + "\n]",
            "output [\n" + _tensor(names.IMAGES_OUT, "TYPE_UINT8", [-1, *image_shape]) + "\n]",
            "",
        ]
    )


def write_triton_repository(
    out_dir: str | Path,
    sampler_path: str | Path,
    generator_path: str | Path,
    max_batch_size: int = 1024,
) -> list[Path]:
    """Write (or refresh) the two Triton models under ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    pairs = ((names.TRITON_SAMPLER, sampler_path), (names.TRITON_GENERATOR, generator_path))
    for name, src_name in pairs:
        src = Path(src_name)
        meta = _meta(src)
        shape = [int(v) for v in json.loads(meta[names.META_IMAGE_SHAPE])]
        if name == names.TRITON_SAMPLER:
            text = sampler_config(shape, int(meta[names.META_Z_DIM]), max_batch_size)
        else:
            text = generator_config(shape, int(meta[names.META_NOISE_CHANNELS]))
        version = out_dir / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, version / "model.onnx")
        (out_dir / name / "config.pbtxt").write_text(text, encoding="utf-8")
        written += [out_dir / name / "config.pbtxt", version / "model.onnx"]
    return written
