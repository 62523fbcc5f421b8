"""The sampler of a D1 that reads embeddings: one ONNX file, raw pixels in, score out.

When D1 reads the pool's frozen embeddings (``ModelConfig.embedding_dim > 0``), its sampler is
three graphs joined with ``onnx.compose`` into one ``sampler.onnx`` with the usual contract
(:mod:`export.names`: uint8 images [batch, H, W, C] -> score, latent)::

    pixels -> the encoder's preprocessing -> the pool's encoder -> projection P -> D1

- *preprocessing*: exactly what ``dgaal pool embed`` did in numpy (:mod:`export.encoder`): grey
  to RGB when the encoder takes three channels, bilinear resize with half-pixel centres rounded
  back to uint8, then for float encoders ``(x / 255 - mean) / std``, in the encoder's layout;
- *encoder*: the file the pool's embeddings were made with (kept beside the pool), unchanged;
- *P + D1*: exported from PyTorch (:class:`HeadGraph`).

A service therefore still embeds one model. The round itself scores with ``sampler-head.onnx``
(P + D1 only) on the embeddings already stored in the pool, instead of running the encoder over
every candidate every round; the stored embeddings are float16, so its scores differ from the
one-file sampler's by about 1e-3 (measured in the export's parity report).

Every export checks both files: the head against PyTorch on the parity images' embeddings, and the
one-file sampler against the head on what the embedding runtime computes for the same raw images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnx.version_converter
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from dgaal_core.model.config import ModelConfig
from dgaal_core.model.networks import LatentDiscriminator
from dgaal_core.model.projection import EmbeddingProjection

from . import names
from .encoder import EncoderSession, InputSpec
from .errors import ExportParityError, ModelMismatchError
from .metadata import model_metadata
from .onnx_export import SamplerParity, _finish, _torch_export, fresh_d1, same_selection
from .sessions import ModelSession

EMBEDDINGS = "embeddings"  # the head's input
MERGED_SCORE_ATOL = 2e-3  # one-file sampler vs head: float32 resize and encoder rounding
HEAD_SCORE_ATOL = 1e-5


class HeadGraph(nn.Module):
    """Embeddings (B, D) or (B, D, 1, 1) -> (score D1(P(e)) (B,), latent P(e) (B, z))."""

    def __init__(self, proj: EmbeddingProjection, d1: LatentDiscriminator) -> None:
        super().__init__()
        self.proj, self.d1 = proj, d1

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj(e)
        return self.d1(z), z


class PixelsToEncoder(nn.Module):
    """uint8 images (B, H, W, C) -> the encoder's input, as :class:`EncoderSession` prepares it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, session: EncoderSession, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        h, w, c = image_shape
        want = session.channels or c
        if c != want and not (c == 1 and want == 3):
            raise ModelMismatchError(
                f"{session.path}: the encoder takes {want} channel(s); the pool has {c}"
            )
        self.repeat = 3 if c != want else 1
        self.size = None if session.size is None or session.size == (h, w) else session.size
        self.uint8 = session.dtype == np.uint8
        self.nchw = session.layout == "nchw"
        self.register_buffer("mean", torch.from_numpy(session.mean[:want].copy()))
        self.register_buffer("std", torch.from_numpy(session.std[:want].copy()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.repeat > 1:
            x = x.repeat(1, 1, 1, self.repeat)
        if self.size is not None:
            x = F.interpolate(x.permute(0, 3, 1, 2), size=self.size, mode="bilinear")
            x = torch.clamp(torch.round(x), 0, 255).permute(0, 2, 3, 1)  # uint8 values, NHWC
        if self.uint8:
            x = x.to(torch.uint8)
        else:
            x = (x / 255.0 - self.mean) / self.std
        return x.permute(0, 3, 1, 2) if self.nchw else x


class HeadSession(ModelSession):
    """``sampler-head.onnx``: embeddings float32 [N, D] -> (score, latent)."""

    kind = names.KIND_SAMPLER_HEAD
    inputs = (EMBEDDINGS,)
    outputs = names.SAMPLER_OUTPUTS

    def score(
        self, embeddings: np.ndarray, batch_size: int = 8192
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores [N] and latents [N, z] of ``embeddings`` [N, D] (any float dtype)."""
        scores, latents = [], []
        for i in range(0, embeddings.shape[0], batch_size):
            e = np.ascontiguousarray(embeddings[i : i + batch_size], dtype=np.float32)
            s, z = self.run({EMBEDDINGS: e})
            scores.append(s)
            latents.append(z)
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(scores), np.concatenate(latents)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _fit(model: onnx.ModelProto, opset: int, ir_version: int) -> onnx.ModelProto:
    """``model`` at the encoder's opset and IR version, which ``onnx.compose`` needs to merge."""
    if _opset(model) != opset:
        model = onnx.version_converter.convert_version(model, opset)
    model.ir_version = ir_version
    return model


def merge_sampler(
    pre: onnx.ModelProto, encoder: onnx.ModelProto, head: onnx.ModelProto
) -> onnx.ModelProto:
    """One graph ``images -> score, latent`` from the three parts (names prefixed apart)."""
    opset, ir = _opset(encoder), max(encoder.ir_version, pre.ir_version, head.ir_version)
    encoder = onnx.ModelProto.FromString(encoder.SerializeToString())
    encoder.ir_version = ir
    pre, head = _fit(pre, opset, ir), _fit(head, opset, ir)
    enc_in, enc_out = encoder.graph.input[0].name, encoder.graph.output[0].name
    pre = onnx.compose.add_prefix(pre, "pre/", rename_inputs=False)
    encoder = onnx.compose.add_prefix(encoder, "encoder/")
    head = onnx.compose.add_prefix(head, "head/", rename_outputs=False)
    # (N, D) or (N, D, 1, 1) from the encoder -> the head's float (N, D), as `pool embed` stores it
    enc_type = encoder.graph.output[0].type.tensor_type.elem_type
    flat = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Cast", ["flat/in"], ["flat/f32"], to=TensorProto.FLOAT),
                helper.make_node("Flatten", ["flat/f32"], ["flat/out"], axis=1),
            ],
            "flatten",
            [helper.make_tensor_value_info("flat/in", enc_type, None)],
            [helper.make_tensor_value_info("flat/out", TensorProto.FLOAT, [names.BATCH, "d"])],
        ),
        opset_imports=[helper.make_opsetid("", opset)], ir_version=ir,
    )  # fmt: skip
    # names.IMAGES stays the graph input; score and latent stay its outputs
    merged = onnx.compose.merge_models(
        pre, encoder, io_map=[(pre.graph.output[0].name, "encoder/" + enc_in)],
        outputs=["encoder/" + enc_out],
    )  # fmt: skip
    merged = onnx.compose.merge_models(
        merged, flat, io_map=[("encoder/" + enc_out, "flat/in")], outputs=["flat/out"]
    )  # fmt: skip
    return onnx.compose.merge_models(
        merged, head, io_map=[("flat/out", head.graph.input[0].name)],
        outputs=list(names.SAMPLER_OUTPUTS),
    )  # fmt: skip


def _parity_error(paths: tuple[Path, ...], message: str) -> ExportParityError:
    for p in paths:
        p.unlink(missing_ok=True)
    return ExportParityError(f"{paths[0]}: parity check failed: {message}")


def export_embedding_sampler(
    proj: EmbeddingProjection,
    d1: LatentDiscriminator,
    config: ModelConfig,
    encoder_path: Path,
    encoder_spec: dict[str, Any],
    sampler_path: Path,
    head_path: Path,
    parity_images: np.ndarray,
    *,
    round_index: int = 0,
    encoder_name: str | None = None,
) -> SamplerParity:
    """Write ``sampler.onnx`` (pixels in: preprocessing + encoder + P + D1) and
    ``sampler-head.onnx`` (embeddings in: P + D1), check both, return the one-file sampler's
    parity report (score and latent against the head on the runtime's embeddings).
    ``encoder_name`` goes into the metadata (default: the encoder file's own)."""
    session = EncoderSession(encoder_path, provider="cpu", spec=InputSpec.from_dict(encoder_spec))
    raw = session.raw_output(parity_images[:2])
    dim = int(np.prod(raw.shape[1:]))
    if dim != config.embedding_dim:
        raise ModelMismatchError(
            f"{encoder_path}: gives {dim}-d embeddings; D1 was trained on "
            f"{config.embedding_dim}-d ones"
        )
    fresh_p = EmbeddingProjection.for_config(config)
    fresh_p.load_state_dict({k: v.detach().cpu() for k, v in proj.state_dict().items()})
    head = HeadGraph(fresh_p.eval(), fresh_d1(d1, config)).eval()
    pre = PixelsToEncoder(session, config.image_shape).eval()
    meta = model_metadata(config, names.KIND_SAMPLER, round_index, 0)
    meta[names.META_D1_INPUT] = "embedding"
    meta[names.META_ENCODER] = encoder_name or session.name
    with tempfile.TemporaryDirectory(prefix=".head-", dir=sampler_path.parent) as tmp:
        pre_path, h_path = Path(tmp) / "pre.onnx", Path(tmp) / "head.onnx"
        example = torch.from_numpy(np.ascontiguousarray(parity_images[:2]))
        _torch_export(pre, (example,), pre_path, (names.IMAGES,), ("pre_out",), False, ("pre_out",))
        flat = torch.from_numpy(raw.reshape(raw.shape[0], -1).astype(np.float32))
        _torch_export(
            head, (flat,), h_path, (EMBEDDINGS,), names.SAMPLER_OUTPUTS, False, (EMBEDDINGS,)
        )  # fmt: skip
        head_model = onnx.load(str(h_path))
        merged = merge_sampler(onnx.load(str(pre_path)), onnx.load(str(encoder_path)), head_model)
    onnx.save_model(merged, str(sampler_path), save_as_external_data=False)
    onnx.save_model(head_model, str(head_path), save_as_external_data=False)
    paths = (sampler_path, head_path)
    _finish(sampler_path, meta)  # metadata, one self-contained file, the full checker
    _finish(head_path, meta | {names.META_KIND: names.KIND_SAMPLER_HEAD})
    return _check_parity(head, session, paths, parity_images)


def _check_parity(
    head: HeadGraph, session: EncoderSession, paths: tuple[Path, Path], images: np.ndarray
) -> SamplerParity:
    from .runtime import SamplerSession

    emb = session.embed(images)
    with torch.inference_mode():
        ref_s, ref_z = (t.numpy() for t in head(torch.from_numpy(emb)))
    head_s, _ = HeadSession(paths[1], provider="cpu").score(emb)
    if not float(np.max(np.abs(head_s - ref_s), initial=0.0)) <= HEAD_SCORE_ATOL:
        raise _parity_error(paths, "the head's scores differ from PyTorch's")
    got_s, got_z = SamplerSession(paths[0], provider="cpu").score(images)
    ds = float(np.max(np.abs(got_s.astype(np.float64) - ref_s), initial=0.0))
    dz = float(np.max(np.abs(got_z.astype(np.float64) - ref_z), initial=0.0))
    if not ds <= MERGED_SCORE_ATOL:
        raise _parity_error(paths, f"one-file score max abs diff {ds:.3g} > {MERGED_SCORE_ATOL}")
    picked = same_selection(ref_s, got_s, MERGED_SCORE_ATOL)
    if isinstance(picked, str):
        raise _parity_error(paths, picked)
    return SamplerParity(images.shape[0], ds, dz, *picked)
