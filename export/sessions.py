"""onnxruntime sessions for dgaal models: provider choice, session options, metadata checks.

Imports numpy and onnxruntime only (never torch). One :class:`ModelSession` per model per process.

Provider choice (``provider="auto"``): the CUDA execution provider only when this onnxruntime
build has it *and* a CUDA device really answers (``libcuda`` loads and ``cuDeviceGetCount`` > 0),
so CPU machines never see CUDA loader errors; the CPU provider otherwise. If the CUDA provider then
fails to load (a driver but no cuDNN, say), "auto" runs on CPU with one ``RuntimeWarning``; only
an explicit ``"cuda"`` fails (:class:`~export.errors.ProviderError`). ``"cpu"`` never tries CUDA.
``cuInit`` runs in the calling process: do not fork a process that then uses CUDA afterwards.
Importing this module has no process-wide effects: CUDA is probed on the first session only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from . import names
from .errors import ModelFileError, ModelMismatchError, ProviderError

ProviderName = Literal["auto", "cpu", "cuda"]
PROVIDERS: tuple[str, ...] = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@cache
def cuda_device_count() -> int:
    """CUDA devices usable by onnxruntime here (0 without the CUDA EP, driver or device)."""
    if CUDA_EP not in ort.get_available_providers():
        return 0
    try:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    with contextlib.suppress(Exception):  # CUDA/cuDNN from the nvidia-* wheels, if installed
        ort.preload_dlls(directory="")
    return int(count.value)


@cache
def _processors() -> tuple[dict[str, str], ...]:
    """The entries of ``/proc/cpuinfo`` (one dict per logical CPU; none when not Linux)."""
    out: list[dict[str, str]] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key, value = key.strip(), value.strip()
                if key == "processor":
                    out.append({})
                if out:
                    out[-1][key] = value
    except OSError:
        return ()
    return tuple(out)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    import platform

    for p in _processors():
        if "model name" in p:
            return p["model name"]
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for p in _processors():
        try:
            if int(p.get("processor", -1)) in allowed and "core id" in p:
                cores.add((p.get("physical id", ""), p["core id"]))
        except ValueError:
            return len(allowed)
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Sequential execution, all graph optimisations, intra-op threads = physical cores."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads) if threads else physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no provider-fallback chatter
    return so


def resolve_provider(provider: str) -> str:
    """``"auto"`` -> ``"cuda"`` or ``"cpu"``; ``"cuda"`` without a device -> ProviderError."""
    if provider not in PROVIDERS:
        raise ProviderError(
            f"provider (--provider): expected one of {', '.join(PROVIDERS)}, got {provider!r}"
        )
    if provider == "cpu":
        return "cpu"
    if cuda_device_count() > 0:
        return "cuda"
    if provider == "cuda":
        why = (
            "this onnxruntime build has no CUDA execution provider"
            if CUDA_EP not in ort.get_available_providers()
            else "no CUDA device or driver found"
        )
        raise ProviderError(
            f"provider 'cuda' asked for, but {why}; use provider='cpu' (`--provider cpu` on the "
            "command line)"
        )
    return "cpu"


@dataclass(frozen=True)
class ModelInfo:
    """What a dgaal model's metadata says about it."""

    kind: str
    image_shape: tuple[int, int, int]
    z_dim: int
    noise_channels: int
    noise_range: tuple[float, float]
    round: int
    config_hash: str
    precision: str
    dgaal_version: str
    metadata: dict[str, str]

    def check_images(self, images: np.ndarray, what: str = "images") -> None:
        """Raise :class:`ModelMismatchError` unless ``images`` is uint8 [n, H, W, C] as expected."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ModelMismatchError(
                f"{what}: expected uint8 [n, {', '.join(map(str, self.image_shape))}], "
                f"got {images.dtype} {list(images.shape)}"
            )

    def check_pool_shape(self, model: Path, pool: Path, pool_shape: Sequence[int]) -> None:
        """Raise :class:`ModelMismatchError` if the pool's (H, W, C) differs from the model's."""
        shape = tuple(int(v) for v in pool_shape)
        if shape == self.image_shape:
            return
        mh, mw, mc = self.image_shape
        ph, pw, pc = shape
        what = f"{mc} channel(s), pool has {pc}" if mc != pc else f"{mh}x{mw}, pool has {ph}x{pw}"
        raise ModelMismatchError(
            f"{model}: the model takes {mh}x{mw}x{mc} images, pool {pool} holds {ph}x{pw}x{pc} "
            f"({what})"
        )


def _parse_info(path: Path, meta: dict[str, str], kind: str) -> ModelInfo:
    if names.META_KIND not in meta:
        raise ModelFileError(f"{path}: an ONNX model without dgaal metadata (not a dgaal {kind})")
    if meta[names.META_KIND] != kind:
        raise ModelFileError(f"{path}: a dgaal {meta[names.META_KIND]} model, expected a {kind}")
    try:
        version = int(meta[names.META_FORMAT])
        shape = tuple(int(v) for v in json.loads(meta[names.META_IMAGE_SHAPE]))
        low, high = (float(v) for v in json.loads(meta.get(names.META_NOISE_RANGE, "[1, 1]")))
        info = ModelInfo(
            kind=kind,
            image_shape=shape,  # type: ignore[arg-type]
            z_dim=int(meta.get(names.META_Z_DIM, "0")),
            noise_channels=int(meta.get(names.META_NOISE_CHANNELS, "0")),
            noise_range=(low, high),
            round=int(meta.get(names.META_ROUND, "-1")),
            config_hash=meta.get(names.META_CONFIG_HASH, ""),
            precision=meta.get(names.META_PRECISION, "fp32"),
            dgaal_version=meta.get(names.META_VERSION, ""),
            metadata=dict(meta),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: damaged dgaal metadata ({e!r})") from None
    if version != names.FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: dgaal model format {version}, this dgaal reads {names.FORMAT_VERSION}"
        )
    if len(info.image_shape) != 3:
        raise ModelFileError(f"{path}: metadata image_shape must be [H, W, C]")
    return info


class ModelSession:
    """One onnxruntime session over a dgaal model file of a given ``kind``, checked on load."""

    kind = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        *,
        device_id: int = 0,
        provider_options: dict[str, Any] | None = None,
        options: ort.SessionOptions | None = None,
    ) -> None:
        """Load and check ``path``.

        ``provider``: "auto", "cpu" or "cuda" (see the module docstring). ``threads``: CPU
        intra-op threads (default: physical cores). ``device_id`` and ``provider_options`` go to
        the CUDA execution provider; ``options`` replaces dgaal's session options entirely (then
        ``threads`` is ignored).
        """
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a directory, not a model file" if self.path.is_dir() else "no such file"
            raise ModelFileError(f"{self.path}: {what}")
        if int(device_id) < 0:
            raise ProviderError(f"device_id: expected an integer >= 0, got {device_id}")
        self._requested, self.device_id = provider, int(device_id)
        self.provider = resolve_provider(provider)
        if self.provider == "cuda" and self.device_id >= cuda_device_count():
            self._cuda_failed(f"no device {device_id}: {cuda_device_count()} CUDA device(s) here")
        so = options if options is not None else session_options(threads)
        cuda_options = {"device_id": self.device_id, **(provider_options or {})}
        self.session = self._load(so, cuda_options if self.provider == "cuda" else None)
        if self.provider == "cuda" and self.session.get_providers()[0] != CUDA_EP:
            # onnxruntime fell back to the CPU on its own (e.g. libcudnn missing): say so
            self._cuda_failed("onnxruntime fell back to the CPU")
        self._check_graph(dict(self.session.get_modelmeta().custom_metadata_map))
        self.io_binding = self.provider == "cuda"

    def _check_graph(self, meta: dict[str, str]) -> None:
        """Check the loaded graph: dgaal metadata of this ``kind``, the expected inputs and
        outputs (:class:`ModelFileError` otherwise); sets ``info``."""
        self.info = _parse_info(self.path, meta, self.kind)
        got_in = tuple(i.name for i in self.session.get_inputs())
        got_out = tuple(o.name for o in self.session.get_outputs())
        if got_in != self.inputs or got_out != self.outputs:
            raise ModelFileError(
                f"{self.path}: graph has inputs {got_in} and outputs {got_out}, "
                f"expected {self.inputs} -> {self.outputs}"
            )

    def _load(self, so: ort.SessionOptions, cuda: dict[str, Any] | None) -> ort.InferenceSession:
        """An InferenceSession on CPU (``cuda`` None) or CUDA with these provider options."""
        providers: list[Any] = [CPU_EP] if cuda is None else [(CUDA_EP, cuda), CPU_EP]
        try:
            return ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own classes for parse/load failures
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if cuda is not None:  # maybe the provider, not the file: try the CPU before blaming it
                self._cuda_failed(first)
                return self._load(so, None)
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({first})") from None

    def _cuda_failed(self, why: str) -> None:
        """An explicit "cuda" fails; "auto" falls back to the CPU with one warning."""
        if self._requested == "cuda":
            raise ProviderError(f"{self.path}: the CUDA execution provider failed to load ({why})")
        warnings.warn(
            f"{self.path}: the CUDA execution provider failed to load ({why}); running on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
        self.provider = "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph; on CUDA through IO binding (outputs stay on the device until copied)."""
        if not self.io_binding:
            return list(self.session.run(list(self.outputs), feeds))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    @property
    def default_batch_size(self) -> int:
        """Images per ``run``: 1024 on CUDA, 256 on CPU (enough to fill the cores' caches)."""
        return 1024 if self.provider == "cuda" else 256

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, provider={self.provider!r})"
