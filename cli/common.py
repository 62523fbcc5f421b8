"""Shared pieces of the ``dgaal`` commands: option aliases and the one error handler.

Keep this module light (typer and the error classes only): every command imports it, and
``dgaal --help`` should start in a blink. Heavy imports (numpy, h5py, torch) belong inside the
command functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from dgaal_core.errors import DgaalError
from dgaal_core.values import check_seed  # pure Python: keeps this module light

P = ParamSpec("P")
R = TypeVar("R")

ERROR_EXIT_CODE = 2

# ---- option aliases shared by several commands -------------------------------------------------
PoolArg = Annotated[Path, typer.Argument(help="Pool file (e.g. pools.h5).", show_default=False)]
PoolOpt = Annotated[
    Path, typer.Option("--pool", help="Pool file (e.g. pools.h5).", show_default=False)
]
ModelOpt = Annotated[
    Path, typer.Option("--model", help="Exported ONNX model file.", show_default=False)
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        help="The pool's work folder: checkpoints, ONNX files (default: POOL stem + .dgaal)."
    ),
]


def _seed(value: int) -> int:
    """``--seed``: refused in one line unless it fits a signed 64-bit integer and is >= 0."""
    try:
        return check_seed(value, "--seed")
    except DgaalError as e:
        raise fail(str(e)) from None


SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of every random choice.", callback=_seed)
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing output instead of refusing.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: <message>`` as one line on stderr; returns the Exit to raise."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return typer.Exit(ERROR_EXIT_CODE)


# import name of a package the base install leaves out -> (its distribution, the extra)
EXTRA_OF = {
    "torch": ("torch", "train"),
    "onnx": ("onnx", "train"),
    "onnxscript": ("onnxscript", "train"),
    "PIL": ("Pillow", "train"),
    "sklearn": ("scikit-learn", "train"),
    "matplotlib": ("matplotlib", "report"),
    "starlette": ("starlette", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "label_studio_sdk": ("label-studio-sdk", "labelstudio"),
}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``e`` is a package an extra provides."""
    known = EXTRA_OF.get((e.name or "").split(".")[0])
    if known is None:
        return None
    package, extra = known
    return (
        f"this command needs {package}, which the base dgaal install leaves out: "
        f"pip install 'dgaal[{extra}]'"
    )


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`DgaalError` into one line ``error: ...`` on stderr and exit code 2, and
    Ctrl-C or SIGTERM into one line and exit code 130 or 143 (:mod:`cli.interrupt`).

    So does a missing optional package (torch without the ``train`` extra, ...): the line says
    which extra to install. Commands import such packages before they write anything. Any other
    exception is a bug and keeps its traceback. Put it under ``@app.command()``.
    """
    return _guarded(fn, defer=False)


def handle_errors_deferred(fn: Callable[P, R]) -> Callable[P, R]:
    """:func:`handle_errors` for commands that run torch or onnxruntime for long (round,
    experiment, demo, pool create): a signal stops them at their next safe point, never inside
    a library's C++ code (see :mod:`cli.interrupt`)."""
    return _guarded(fn, defer=True)


def _guarded(fn: Callable[P, R], *, defer: bool) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from . import interrupt

        try:
            with interrupt.handled(), interrupt.deferred() if defer else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except interrupt.Interrupted as e:  # Ctrl-C / SIGTERM: after every clean-up ran
            print(f"error: {e.message}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except DgaalError as e:
            raise fail(str(e)) from None
        except ModuleNotFoundError as e:
            line = missing_extra(e)
            if line is None:
                raise
            raise fail(line) from None
        except OSError as e:  # a file system error no layer below named: still one line
            from dgaal_core.atomic import storage_error

            if (found := storage_error(e)) is None:
                raise
            raise fail(str(found)) from None

    return wrapper


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MiB"`` (rich's binary units)."""
    from rich.filesize import pick_unit_and_suffix

    unit, suffix = pick_unit_and_suffix(int(n), ["B", "KiB", "MiB", "GiB", "TiB"], 1024)
    return f"{int(n)} B" if unit == 1 else f"{n / unit:.1f} {suffix}"


def set_torch_threads(preset: str) -> None:
    """Intra-op threads for training on CPU, unless ``OMP_NUM_THREADS`` says otherwise.

    The ``small`` preset's models are tiny: one thread is as fast as two, and spin-waiting
    OpenMP threads collapse when the cores are shared (measured: one digits round took 14 s on
    one thread and 175 s on two while another process ran). The ``paper`` preset's VGG16 and
    U-Net do gain from more threads, so torch keeps its default there.
    """
    import os

    if "OMP_NUM_THREADS" not in os.environ and preset == "small":
        import torch

        torch.set_num_threads(1)


def _one_of(option: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A callback refusing any value but ``choices`` in one line, before any work is done."""

    def check(value: str) -> str:
        if value not in choices:
            raise fail(f"{option} {value}: expected one of {', '.join(choices)}")
        return value

    return check


PRESETS = ("small", "paper")  # dgaal_core.model.config.PRESETS (not imported: keep this light)
PROVIDERS = ("auto", "cpu", "cuda")
DEVICES = ("auto", "cpu", "cuda")

# ---- options shared by several commands (one definition, one help text) ------------------------
PresetOpt = Annotated[
    str,
    typer.Option(
        help="small (CPUs, demos) | paper (the paper's sizes).",
        callback=_one_of("--preset", PRESETS),
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(help="Training device: auto | cpu | cuda.", callback=_one_of("--device", DEVICES)),
]
ProviderOpt = Annotated[
    str,
    typer.Option(
        help="onnxruntime provider: auto (CUDA when a device answers, else CPU) | cpu | cuda.",
        callback=_one_of("--provider", PROVIDERS),
    ),
]
EpochsOpt = Annotated[
    float | None, typer.Option(help="Algorithm 1 passes over the pools (preset default).")
]
GanStepsOpt = Annotated[
    int | None, typer.Option(help="Algorithm 1 iterations per round (overrides --epochs).")
]
TaskEpochsOpt = Annotated[int | None, typer.Option(help="Epochs of the task model T.")]
CoevolveStepsOpt = Annotated[int | None, typer.Option(help="D1 co-evolution steps (Eq. 9).")]
DepthLimitOpt = Annotated[
    int, typer.Option(help="Generated images of this depth are not copied again.")
]
TaskMinStepsOpt = Annotated[
    int | None, typer.Option(help="Least number of T's optimiser steps (preset default).")
]

# ---- the method's settings (round and experiment); unset = the strategy's measured default -----
ShortlistOpt = Annotated[
    float | None,
    typer.Option(help="D1 strategies: spread the N picks over the k*N lowest (k >= 1; 1 = off)."),
]
TaskWeightOpt = Annotated[
    float | None,
    typer.Option(help="D1 strategies: weight (0..1) of T's uncertainty rank fused with D1's."),
]
GeneratedCapOpt = Annotated[
    float | None,
    typer.Option(help="D1 strategies: most share (0..1) of generated images among the picks."),
]
RetrainGanOpt = Annotated[
    bool | None,
    typer.Option(
        "--retrain-gan/--no-retrain-gan",
        help="Re-run Algorithm 1 every round (VAAL's way) instead of once, then co-evolving D1.",
        show_default=False,
    ),
]
TaskModelOpt = Annotated[
    str,
    typer.Option(
        help="T: cnn (end to end on the pixels) | linear (a head on the pool's embeddings: run "
        "`dgaal pool embed` first) | linear-ssl (that head, also fitted on the candidates with "
        "pseudo-labels propagated on the embeddings' kNN graph).",
        callback=_one_of("--task-model", ("cnn", "linear", "linear-ssl")),
    ),
]
D1InputOpt = Annotated[
    str,
    typer.Option(
        help="What D1 tells labelled from unlabelled on: auto (embedding when the pool has "
        "embeddings, else image) | image (G1's latent, the paper) | embedding (a trained "
        "projection of the pool's embeddings, with the encoder merged into the exported "
        "sampler: run `dgaal pool embed` first).",
        callback=_one_of("--d1-input", ("auto", "image", "embedding")),
    ),
]
PmseWeightOpt = Annotated[float | None, typer.Option(help="lambda of Eq. 8 (preset: 0.1).")]
NoiseSpreadOpt = Annotated[
    float, typer.Option(help="x_g's noise-head scales are drawn in [1 - s, 1 + s].")
]


NoiseSkipsOpt = Annotated[
    bool, typer.Option("--noise-skips", help="The noise head also scales the U-Net's skips.")
]


def method_settings(
    task_min_steps: int | None,
    shortlist: float | None,
    task_weight: float | None,
    generated_cap: float | None,
    retrain_gan: bool | None,
    pmse_weight: float | None,
    noise_spread: float,
    noise_skips: bool = False,
) -> dict[str, object]:
    """The RoundConfig fields of the options above, as keyword arguments."""
    return {
        "task_min_steps": task_min_steps,
        "shortlist": shortlist,
        "task_weight": task_weight,
        "generated_cap": generated_cap,
        "retrain_gan": retrain_gan,
        "pmse_weight": pmse_weight,
        "noise_spread": noise_spread,
        "noise_skips": noise_skips,
    }


# ---- where scoring and generation run (score, generate, round) ----------------------------------
class EngineName(str, Enum):
    """Where scoring and generation run."""

    local = "local"
    ray = "ray"


EngineOpt = Annotated[
    EngineName,
    typer.Option(
        "--engine",
        help="local: onnxruntime in this process; ray: Ray Data batch inference on a Ray "
        "cluster (pip install 'dgaal[ray]').",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="--engine ray: auto (the cluster this node joined with `ray start`) or "
        "ray://HOST:10001; unset: a Ray started in this process.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="--engine ray: onnxruntime actors (default: one per CPU but one, or one per GPU).",
    ),
]


def ray_options(
    engine: EngineName, address: str | None, workers: int | None, provider: str, batch: int | None
) -> Any:
    """:class:`export.distributed.RayOptions` for ``--engine ray``, else None."""
    if engine is EngineName.local:
        if address is not None or workers is not None:
            raise DgaalError("--address and --workers apply to --engine ray only")
        return None
    from export.distributed import RayOptions, require_ray

    require_ray()  # one line if it is not installed, before any work
    sized = {} if batch is None else {"batch_size": batch}
    opts = RayOptions(address=address, workers=workers, provider=provider, **sized)
    opts.check()
    return opts
