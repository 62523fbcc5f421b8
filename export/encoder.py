"""Any ONNX image encoder over a pool's images: the runtime half of ``dgaal pool embed``.

Torch-free (numpy, onnxruntime, resizing in numpy). An encoder has one image input and gives
one embedding per image as its first output, ``(N, D)`` or ``(N, D, 1, 1)``. Its input is either

- ``uint8`` NHWC, ``[N, H, W, C]``: the pool's pixels as they are (the encoder does its own
  normalisation, as one exported with dgaal's conventions does), or
- ``float32`` NCHW ``[N, C, H, W]`` (or NHWC): pixels scaled to [0, 1], then ``(x - mean) / std``
  per channel. mean/std default to ImageNet's, the convention of torchvision, timm and most
  Hugging Face vision models.

Sizes: an input with fixed H and W gets the images resized to them (bilinear); otherwise the
pool's own size is fed, unless ``size`` asks for another. Every choice can be given explicitly
(:class:`InputSpec`) or read from the model's metadata (``dgaal.input_layout``,
``dgaal.input_size``, ``dgaal.mean``, ``dgaal.std``); what was used is recorded with the
embeddings, so rows that join later are embedded the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFileError, ModelMismatchError
from .sessions import ModelSession

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUTS = ("nhwc", "nchw")


@dataclass(frozen=True)
class InputSpec:
    """How pool images become the encoder's input (None: from the model, else the default)."""

    layout: str | None = None  # "nhwc" or "nchw"
    size: int | None = None  # resize to size x size before the encoder
    mean: tuple[float, ...] | None = None  # float inputs: per-channel, on [0, 1] pixels
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (tuples as lists), as the embeddings manifest records it."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        def tup(v: Any) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(x) for x in v)

        return cls(
            data.get("layout"), data.get("size"), tup(data.get("mean")), tup(data.get("std"))
        )


def parse_floats(text: str) -> tuple[float, ...]:
    """``"0.5,0.5 0.5"`` -> ``(0.5, 0.5, 0.5)``; ``ValueError`` on anything else or nothing."""
    values = tuple(float(v) for v in text.replace(",", " ").split())
    if not values:
        raise ValueError(f"no numbers in {text!r}")
    return values


def _floats(text: str, what: str, path: Path) -> tuple[float, ...]:
    try:
        return parse_floats(text)
    except ValueError:
        raise ModelFileError(
            f"{path}: metadata {what} is not a list of numbers: {text!r}"
        ) from None


class EncoderSession(ModelSession):
    """An onnxruntime session over an image encoder; :meth:`embed` maps uint8 NHWC images to
    float32 embeddings [N, D]. ``spec`` fills in what the model and its metadata leave open."""

    kind = "encoder"

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        *,
        spec: InputSpec | None = None,
        **session: Any,
    ) -> None:
        self._given = spec or InputSpec()
        super().__init__(path, provider, threads, **session)

    def _check_graph(self, meta: dict[str, str]) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or not outs:
            raise ModelFileError(
                f"{self.path}: an encoder takes one image input and gives an embedding; this "
                f"graph has {len(ins)} inputs and {len(outs)} outputs"
            )
        inp = ins[0]
        self.inputs, self.outputs = (inp.name,), (outs[0].name,)
        self.name = meta.get("dgaal.encoder", self.path.name)
        if inp.type not in ("tensor(uint8)", "tensor(float)"):
            raise ModelFileError(
                f"{self.path}: input {inp.name} is {inp.type}; expected uint8 or float"
            )
        self.dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelFileError(
                f"{self.path}: input {inp.name} has shape {shape}; expected 4-d images"
            )
        given = self._given
        layout = given.layout or meta.get("dgaal.input_layout")
        if layout is None:  # from the shape: the axis with 1 or 3 channels
            layout = "nchw" if shape[1] in (1, 3) else "nhwc" if shape[3] in (1, 3) else None
            if layout is None:
                layout = "nhwc" if self.dtype == np.uint8 else "nchw"
        if layout not in LAYOUTS:
            raise ModelFileError(f"{self.path}: input layout {layout!r}; expected nhwc or nchw")
        self.layout = layout
        h, w, c = (
            (shape[1], shape[2], shape[3]) if layout == "nhwc" else (shape[2], shape[3], shape[1])
        )
        self.channels = c if isinstance(c, int) else None
        fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        size = given.size or (int(meta["dgaal.input_size"]) if "dgaal.input_size" in meta else None)
        if fixed is not None and size is not None and (size, size) != fixed:
            raise ModelMismatchError(
                f"{self.path}: the model takes {fixed[0]}x{fixed[1]} images; "
                f"size {size} cannot be fed"
            )
        self.size: tuple[int, int] | None = fixed or ((size, size) if size else None)
        mean = given.mean or (
            _floats(meta["dgaal.mean"], "dgaal.mean", self.path) if "dgaal.mean" in meta else None
        )
        std = given.std or (
            _floats(meta["dgaal.std"], "dgaal.std", self.path) if "dgaal.std" in meta else None
        )
        self.mean = np.asarray(mean or IMAGENET_MEAN, np.float32)
        self.std = np.asarray(std or IMAGENET_STD, np.float32)
        if self.channels == 1 and not (mean or std):  # ImageNet's, averaged over RGB
            self.mean, self.std = self.mean.mean(keepdims=True), self.std.mean(keepdims=True)
        for name in ("mean", "std") if self.dtype == np.float32 else ():
            value = getattr(self, name)
            if self.channels and value.size == 1:  # one value for every channel
                setattr(self, name, np.repeat(value, self.channels))
            elif self.channels and value.size != self.channels:
                raise ModelMismatchError(
                    f"{self.path}: {name} has {value.size} values; the model takes "
                    f"{self.channels} channels"
                )
        if np.any(self.std <= 0):
            raise ModelMismatchError(f"{self.path}: std must be positive, got {self.std.tolist()}")

    @property
    def spec(self) -> InputSpec:
        """The preprocessing this session applies (recorded with the embeddings)."""
        float_input = self.dtype == np.float32
        return InputSpec(
            layout=self.layout,
            size=None if self.size is None else int(self.size[0]),
            mean=tuple(float(v) for v in self.mean) if float_input else None,
            std=tuple(float(v) for v in self.std) if float_input else None,
        )

    def describe(self) -> dict[str, Any]:
        """What the embeddings manifest records about this encoder (but its file and hash)."""
        return {"name": self.name, "input": self.spec.to_dict(), "dtype": np.dtype(self.dtype).name}

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ModelMismatchError(
                f"images: expected uint8 [n, H, W, C], got {images.dtype} {list(images.shape)}"
            )
        c = images.shape[3]
        want = self.channels or c
        if c != want:
            if c == 1 and want == 3:
                images = np.repeat(images, 3, axis=3)  # grey to RGB, as converting does
            else:
                raise ModelMismatchError(
                    f"{self.path}: the encoder takes {want} channel(s); the pool has {c}"
                )
        if self.size is not None and images.shape[1:3] != self.size:
            images = _resize(images, self.size)
        if self.dtype == np.uint8:
            x = images
        else:
            x = (images.astype(np.float32) / 255.0 - self.mean[: images.shape[3]]) / self.std[
                : images.shape[3]
            ]
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def raw_output(self, images: np.ndarray) -> np.ndarray:
        """The encoder's first output for uint8 NHWC ``images``, in its own shape (float32)."""
        (out,) = self.run({self.inputs[0]: self._prepare(images)})[:1]
        return np.asarray(out, dtype=np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings [N, D] (float32) of uint8 NHWC ``images``."""
        out = self.raw_output(images)
        if out.ndim > 2 and all(d == 1 for d in out.shape[2:]):
            out = out.reshape(out.shape[0], -1)
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ModelMismatchError(
                f"{self.path}: the encoder's output {self.outputs[0]} has shape {list(out.shape)}; "
                "expected (N, D) or (N, D, 1, 1)"
            )
        if not np.all(np.isfinite(out)):
            raise ModelMismatchError(f"{self.path}: the encoder gave NaN or infinite values")
        return out

    def embed_batches(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """:meth:`embed` over an iterator of image batches."""
        for images in batches:
            yield self.embed(images)


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weights of high along one axis, half-pixel centres (the
    convention of PIL, OpenCV and ``align_corners=False``)."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (pos - low).astype(np.float32)


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 NHWC ``images`` to ``size`` (height, width), in numpy (the
    runtime needs neither torch nor Pillow). Shrinking by more than 2x aliases, as plain
    bilinear does; encoders are usually fed images near their own size or larger."""
    y0, y1, wy = _axis(images.shape[1], size[0])
    x0, x1, wx = _axis(images.shape[2], size[1])
    x = images.astype(np.float32)
    rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
    out = rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
