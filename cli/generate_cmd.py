"""``dgaal generate``: run ``generator.onnx`` on chosen pool images, for inspection (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dgaal_core.errors import DgaalError

from .common import (
    AddressOpt,
    EngineName,
    EngineOpt,
    ModelOpt,
    PoolOpt,
    ProviderOpt,
    SeedOpt,
    WorkersOpt,
    handle_errors,
    ray_options,
)


def parse_ids(value: str) -> Any:
    """``"1,2,3"`` or a file: text with ids separated by commas/whitespace, or a .npy array."""
    import numpy as np

    path = Path(value)
    try:
        if path.is_file() and path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind not in "iu":  # float ids would be truncated silently
                raise ValueError(f"an integer array, not {arr.dtype}")
            ids = arr.astype(np.int64).ravel()
        else:
            text = path.read_text(encoding="utf-8") if path.is_file() else value
            ids = np.array([int(tok) for tok in text.replace(",", " ").split()], dtype=np.int64)
    except (ValueError, OSError, OverflowError) as e:
        raise DgaalError(f"--ids {value}: expected ids like 1,2,3 or a file of ids ({e})") from None
    if ids.size == 0:
        raise DgaalError(f"--ids {value}: no ids given")
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:  # one image per id: a repeat would write one file for two
        twice = ", ".join(map(str, unique[counts > 1][:5]))
        raise DgaalError(f"--ids {value}: each id may be given once; repeated: {twice}")
    return ids


@handle_errors
def generate(
    model: ModelOpt,
    pool: PoolOpt,
    ids: Annotated[
        str, typer.Option("--ids", help="Pool ids: 1,2,3 or a file of ids (.txt/.csv/.npy).")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="A .npz file (images, ids, noise_scales) or a folder of PNGs."),
    ],
    seed: SeedOpt = 0,
    provider: ProviderOpt = "auto",
    engine: EngineOpt = EngineName.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Make G(x) for the given pool images with noise scales drawn from --seed."""
    import numpy as np

    from export.runtime import GeneratorSession

    chosen = parse_ids(ids)
    if out.exists() and out.is_file() and out.suffix != ".npz":
        raise DgaalError(f"--out {out}: exists and is not a .npz file or a folder")
    if out.suffix != ".npz":
        import PIL.Image  # noqa: F401  (PNGs need Pillow: say so before generating anything)
    ray = ray_options(engine, address, workers, provider, None)
    gen = GeneratorSession(model, provider="cpu" if ray else provider)
    noise = gen.draw_noise_scales(seed)
    if ray is None:
        images = gen.generate_pool(pool, chosen, noise)
    else:
        from export.distributed import generate_pool_ray

        images = generate_pool_ray(model, pool, chosen, noise, ray)
    if out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, images=images, ids=chosen, noise_scales=noise)
    else:
        write_pngs(out, chosen, images)
    typer.echo(f"generated {len(chosen)} images from {pool} with seed {seed}: {out}")


def write_pngs(folder: Path, ids: Any, images: Any) -> None:
    """One ``<id>.png`` per image (grayscale for 1 channel, RGB for 3)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in zip(ids, images, strict=True):
        arr = img[:, :, 0] if img.shape[2] == 1 else img
        Image.fromarray(arr).save(folder / f"{int(i)}.png")


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the top-level app."""
    app.command("generate")(generate)
