"""The metadata every exported dgaal model carries (``metadata_props``), and the one way to set
it: :func:`set_metadata` on a loaded model, :func:`update_metadata` on a file (onnx only)."""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path

import onnx

from dgaal_core.model.config import ModelConfig, config_hash
from dgaal_core.model.noise import PAPER_SPREAD, noise_range

from . import names


def dgaal_version() -> str:
    """Installed dgaal version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return importlib_metadata.version("dgaal")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def model_metadata(
    config: ModelConfig,
    kind: str,
    round_index: int,
    noise_channels: int,
    noise_spread: float = PAPER_SPREAD,
) -> dict[str, str]:
    """The metadata_props of an exported fp32 model; ``noise_spread`` is the range the
    generator's noise-head scales are drawn from (``dgaal.noise_range``)."""
    return {
        names.META_FORMAT: str(names.FORMAT_VERSION),
        names.META_KIND: kind,
        names.META_VERSION: dgaal_version(),
        names.META_IMAGE_SHAPE: json.dumps(list(config.image_shape)),
        names.META_CHANNELS: str(config.image_shape[2]),
        names.META_Z_DIM: str(config.latent_dim),
        names.META_NOISE_CHANNELS: str(noise_channels),
        names.META_NOISE_RANGE: json.dumps(list(noise_range(noise_spread))),
        names.META_ROUND: str(int(round_index)),
        names.META_CONFIG_HASH: config_hash(config),
        names.META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        names.META_PRECISION: "fp32",
    }


def set_metadata(
    model: onnx.ModelProto, values: dict[str, str], *, base: onnx.ModelProto | None = None
) -> None:
    """Set ``values`` in ``model``'s metadata_props, replacing entries of the same keys and
    keeping the others; with ``base``, the others are ``base``'s (a variant made from it)."""
    source = model if base is None else base
    kept = [(p.key, p.value) for p in source.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        model.metadata_props.add(key=key, value=value)


def update_metadata(path: Path, values: dict[str, str]) -> None:
    """:func:`set_metadata` on the model file at ``path`` (rewritten as one file)."""
    model = onnx.load(str(path))
    set_metadata(model, values)
    onnx.save_model(model, str(path), save_as_external_data=False)
