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
from functools import cache
from pathlib import Path
from typing import Any

import onnx

from . import names


def _meta(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


@cache
def _model_config_class() -> Any:
    """The part of Triton's ``ModelConfig`` message (model_config.proto) dgaal writes, built
    with protobuf (onnx's dependency), so ``config.pbtxt`` is protobuf's own text format."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="dgaal_triton.proto", package="inference")
    dtype = fdp.enum_type.add(name="DataType")
    for number, name in enumerate(("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8")):
        dtype.value.add(name=name, number=number)
    dtype.value.add(name="TYPE_FP32", number=11)
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = fdp.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            f = m.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                f.type_name = type_name

    tensor = [
        ("name", 1, opt, F.TYPE_STRING, ""),
        ("data_type", 2, opt, F.TYPE_ENUM, ".inference.DataType"),
        ("dims", 3, rep, F.TYPE_INT64, ""),
        ("reshape", 5, opt, F.TYPE_MESSAGE, ".inference.ModelTensorReshape"),
    ]
    message("ModelTensorReshape", [("shape", 1, rep, F.TYPE_INT64, "")])
    message("ModelTensor", tensor)
    message("ModelDynamicBatching", [("max_queue_delay_microseconds", 3, opt, F.TYPE_UINT64, "")])
    message("ModelConfig", [
        ("name", 1, opt, F.TYPE_STRING, ""),
        ("platform", 2, opt, F.TYPE_STRING, ""),
        ("max_batch_size", 4, opt, F.TYPE_INT32, ""),
        ("input", 5, rep, F.TYPE_MESSAGE, ".inference.ModelTensor"),
        ("output", 6, rep, F.TYPE_MESSAGE, ".inference.ModelTensor"),
        ("dynamic_batching", 11, opt, F.TYPE_MESSAGE, ".inference.ModelDynamicBatching"),
    ])  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _tensor(
    config: Any, kind: str, name: str, dtype: str, dims: list[int], *, scalar: bool = False
) -> None:
    t = getattr(config, kind).add(name=name, data_type=dtype, dims=dims)
    if scalar:  # Triton's [1] per item, reshaped to a scalar
        t.reshape.SetInParent()


def _text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config, use_short_repeated_primitives=True)


def sampler_config(image_shape: list[int], z_dim: int, max_batch_size: int) -> str:
    """config.pbtxt of the sampler: dynamic batching, dims without the batch axis."""
    config = _model_config_class()(
        name=names.TRITON_SAMPLER, platform="onnxruntime_onnx", max_batch_size=max_batch_size
    )
    config.dynamic_batching.max_queue_delay_microseconds = 2000  # wait for others to fill a batch
    _tensor(config, "input", names.IMAGES, "TYPE_UINT8", image_shape)
    _tensor(config, "output", names.SCORE, "TYPE_FP32", [1], scalar=True)
    _tensor(config, "output", names.LATENT, "TYPE_FP32", [z_dim])
    return _text(config)


def generator_config(image_shape: list[int], noise_channels: int) -> str:
    """config.pbtxt of the generator: no Triton batching (noise_scales has no batch axis)."""
    config = _model_config_class()(
        name=names.TRITON_GENERATOR, platform="onnxruntime_onnx", max_batch_size=0
    )
    _tensor(config, "input", names.IMAGES, "TYPE_UINT8", [-1, *image_shape])
    _tensor(config, "input", names.NOISE_SCALES, "TYPE_FP32", [noise_channels])
    _tensor(config, "output", names.IMAGES_OUT, "TYPE_UINT8", [-1, *image_shape])
    return _text(config)


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
