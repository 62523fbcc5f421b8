"""The whole export of one round: models in, checked ONNX files (and optional variants) out.

:func:`export_round` writes into a temporary folder inside ``out_dir`` and moves each file into
place only after every check passed, so a failed export leaves the previous files untouched.
:func:`load_models` finds what to export: a round's checkpoint in the pool's work directory
(``<pool stem>.dgaal/round-NNNN/checkpoint.pt``), a given checkpoint file, or, for tests and
benchmarks, freshly initialised models from a preset.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgaal_core.atomic import storage_error
from dgaal_core.loop.workdir import CHECKPOINT_FILE, latest_round, round_dir, work_dir
from dgaal_core.model.config import ModelConfig, preset
from dgaal_core.model.networks import LatentDiscriminator, UNetGenerator, build_models
from dgaal_core.model.noise import PAPER_SPREAD
from dgaal_core.model.projection import EmbeddingProjection
from dgaal_core.pool.embeddings import read_manifest
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State

from . import names
from .errors import CheckpointNotFoundError, ModelFileError, ModelMismatchError
from .onnx_export import GeneratorParity, SamplerParity, export_generator, export_sampler
from .quantize import Int8Report, convert_fp16, quantize_sampler_int8
from .triton import write_triton_repository

PARITY_IMAGES = 256  # pool images every export is checked against PyTorch on
CALIBRATION_IMAGES = 256  # pool images the int8 sampler is calibrated on


@dataclass
class ExportedModels:
    """What to export: G, D1, their config, the round they belong to and where they came from."""

    g: UNetGenerator
    d1: LatentDiscriminator
    config: ModelConfig
    round_index: int
    source: str
    noise_spread: float = PAPER_SPREAD  # generation draws the noise-head scales in [1 -+ this]
    proj: EmbeddingProjection | None = None  # D1 reads P(embedding) (config.embedding_dim > 0)
    encoder: tuple[Path, dict, str] | None = None  # then: the pool's encoder, preprocessing, name


def pool_encoder(pool_path: str | Path) -> tuple[Path, dict, str]:
    """The encoder file the pool's embeddings were made with, its preprocessing and its name."""
    manifest = read_manifest(Path(pool_path))
    if manifest is None:
        raise ModelFileError(
            f"{pool_path}: D1 reads the pool's embeddings and the pool has none; "
            "run `dgaal pool embed` first"
        )
    from .embed import kept_encoder

    path = kept_encoder(Path(pool_path), manifest, "the sampler cannot contain it")
    name = str(manifest.encoder.get("name") or path.name)
    return path, dict(manifest.encoder.get("input") or {}), name


@dataclass
class ExportReport:
    """Files written by :func:`export_round` and the checks they passed."""

    sampler: Path
    generator: Path
    sampler_parity: SamplerParity
    generator_parity: GeneratorParity
    sampler_head: Path | None = None  # D1 on embeddings: P + D1 alone, embeddings in
    int8: Int8Report | None = None
    fp16: list[Path] = field(default_factory=list)
    fp16_message: str = ""
    triton: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def load_models(
    pool_path: str | Path,
    *,
    workdir: str | Path | None = None,
    round_index: int | None = None,
    checkpoint: str | Path | None = None,
    untrained_preset: str | None = None,
    seed: int = 0,
) -> ExportedModels:
    """G and D1 to export for the pool at ``pool_path`` (see the module docstring); a round's
    checkpoint is looked for in ``workdir`` (default: the pool's own work folder)."""
    with PoolReader(pool_path) as reader:
        image_shape, num_classes = reader.image_shape, reader.num_classes
    if untrained_preset is not None:
        config = preset(untrained_preset, image_shape, num_classes).model
        models = build_models(config, seed)
        r = 0 if round_index is None else round_index
        return ExportedModels(models.g, models.d1, config, r, f"untrained {untrained_preset}")
    from dgaal_core.model.checkpoint import load_checkpoint, run_config_of

    if checkpoint is None:
        folder = Path(workdir) if workdir is not None else work_dir(pool_path)
        found = latest_round(folder) if round_index is None else round_index
        path = None if found is None else round_dir(folder, found) / CHECKPOINT_FILE
        if path is None or not path.is_file():
            where = folder if path is None else path
            raise CheckpointNotFoundError(
                f"no checkpoint to export at {where} (no round has finished there); run a round "
                "first (rounds run with --workdir W: pass the same --workdir), or pass "
                "--checkpoint FILE, or --untrained for freshly initialised models"
            )
        checkpoint = path
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointNotFoundError(f"{checkpoint}: no such checkpoint file")
    ckpt = load_checkpoint(checkpoint)
    config = run_config_of(ckpt).model
    if tuple(config.image_shape) != tuple(image_shape):
        raise ModelMismatchError(
            f"{checkpoint}: trained on {list(config.image_shape)} images, pool {pool_path} holds "
            f"{list(image_shape)}"
        )
    g, d1 = UNetGenerator(config), LatentDiscriminator(config.latent_dim, config.d1_hidden)
    g.load_state_dict(ckpt["models"]["g"])
    d1.load_state_dict(ckpt["models"]["d1"])
    r = int(ckpt.get("round", 0)) if round_index is None else round_index
    spread = float(ckpt.get("extra", {}).get("noise_spread", PAPER_SPREAD))
    proj, encoder = None, None
    if config.embedding_dim:
        proj = EmbeddingProjection.for_config(config)
        proj.load_state_dict(ckpt["models"]["proj"])
        encoder = pool_encoder(pool_path)
    return ExportedModels(g, d1, config, r, str(checkpoint), spread, proj, encoder)


def sample_pool_images(reader: PoolReader, count: int, seed: int = 0, skip: int = 0) -> np.ndarray:
    """Up to ``count`` images drawn (seeded, without repeats) from the pool's candidates, or from
    all rows when it has too few; ``skip`` leaves out the first ``skip`` draws (disjoint sets)."""
    ids = reader.ids(State.UNLABELLED)
    if ids.size < min(count + skip, reader.num_rows):
        ids = reader.ids()
    order = np.random.default_rng(seed).permutation(ids.size)
    chosen = np.sort(ids[order[skip : skip + count]])
    return reader.read_images(chosen)


def export_round(
    models: ExportedModels,
    out_dir: str | Path,
    parity_images: np.ndarray,
    *,
    int8: bool = False,
    calibration_images: np.ndarray | None = None,
    agreement_images: np.ndarray | None = None,
    int8_min_agreement: float = 0.99,
    fp16: bool = False,
    triton_dir: str | Path | None = None,
    dynamo: bool = False,
    seed: int = 0,
) -> ExportReport:
    """Export, check and publish sampler.onnx and generator.onnx (+ variants) in ``out_dir``.

    A file system error (a full disk, a read-only folder) is one StorageError naming
    ``out_dir``; the files published before stay as they were."""
    try:
        return _export_round(
            models, out_dir, parity_images, int8=int8, calibration_images=calibration_images,
            agreement_images=agreement_images, int8_min_agreement=int8_min_agreement,
            fp16=fp16, triton_dir=triton_dir, dynamo=dynamo, seed=seed,
        )  # fmt: skip
    except OSError as e:
        raise storage_error(e, out_dir) or e from None


def _export_round(
    models: ExportedModels,
    out_dir: str | Path,
    parity_images: np.ndarray,
    *,
    int8: bool,
    calibration_images: np.ndarray | None,
    agreement_images: np.ndarray | None,
    int8_min_agreement: float,
    fp16: bool,
    triton_dir: str | Path | None,
    dynamo: bool,
    seed: int,
) -> ExportReport:
    start = time.perf_counter()
    if models.proj is not None and (int8 or fp16):  # refused before anything is written
        option = "--int8" if int8 else "--fp16"
        raise ModelFileError(
            f"{option}: {models.source} has D1 on the pool's embeddings, and a sampler that "
            "contains the encoder has no int8 or fp16 variant yet; export it without "
            "--int8/--fp16"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        s_path, g_path = tmp / names.SAMPLER_FILE, tmp / names.GENERATOR_FILE
        head = None
        if models.proj is not None:  # one file: the pool's encoder + P + D1
            from .embedding_sampler import export_embedding_sampler

            assert models.encoder is not None
            head = tmp / names.SAMPLER_HEAD_FILE
            enc_path, enc_spec, enc_name = models.encoder
            sp = export_embedding_sampler(
                models.proj, models.d1, models.config, enc_path, enc_spec, s_path, head,
                parity_images, round_index=models.round_index, encoder_name=enc_name,
            )  # fmt: skip
        else:
            sp = export_sampler(
                models.g, models.d1, models.config, s_path, parity_images,
                round_index=models.round_index, dynamo=dynamo,
            )  # fmt: skip
        gp = export_generator(
            models.g, models.config, g_path, parity_images,
            round_index=models.round_index, dynamo=dynamo, seed=seed,
            noise_spread=models.noise_spread,
        )  # fmt: skip
        report = ExportReport(s_path, g_path, sp, gp, head)
        if int8:
            calib = parity_images if calibration_images is None else calibration_images
            agree = parity_images if agreement_images is None else agreement_images
            report.int8 = quantize_sampler_int8(
                s_path, tmp / names.SAMPLER_INT8_FILE, calib, agree,
                min_agreement=int8_min_agreement,
            )  # fmt: skip
        if fp16:
            report.fp16, report.fp16_message = _fp16(s_path, g_path, tmp, parity_images, seed)
        published = _publish(tmp, out_dir)
    report.sampler, report.generator = published[s_path.name], published[g_path.name]
    if head is not None:
        report.sampler_head = published[head.name]
    if report.int8 is not None and report.int8.path is not None:
        report.int8 = _moved(report.int8, published[names.SAMPLER_INT8_FILE])
    report.fp16 = [published[p.name] for p in report.fp16]
    if triton_dir is not None:
        report.triton = write_triton_repository(triton_dir, report.sampler, report.generator)
    report.seconds = time.perf_counter() - start
    return report


def _fp16(
    s_path: Path, g_path: Path, tmp: Path, images: np.ndarray, seed: int
) -> tuple[list[Path], str]:
    try:
        from .runtime import GeneratorSession

        noise = GeneratorSession(g_path, provider="cpu").draw_noise_scales(seed)
        s16, ds = convert_fp16(s_path, tmp / names.SAMPLER_FP16_FILE, images, None)
        g16, dg = convert_fp16(g_path, tmp / names.GENERATOR_FP16_FILE, images, noise)
    except ImportError as e:
        return [], f"fp16 skipped: onnxruntime.transformers is not importable ({e})"
    except ValueError as e:
        return [], f"fp16 refused: {e}"
    return [s16, g16], f"fp16 written (checked on CPU: score diff {ds:.2g}, pixel diff {dg:.0f})"


def _publish(tmp: Path, out_dir: Path) -> dict[str, Path]:
    """Move every file of ``tmp`` into ``out_dir`` (same file system: atomic per file)."""
    placed = {}
    for p in sorted(tmp.iterdir()):
        if p.is_file() and p.suffix == ".onnx":
            target = out_dir / p.name
            os.replace(p, target)
            placed[p.name] = target
    return placed


def _moved(report: Int8Report, path: Path) -> Int8Report:
    return dataclasses.replace(report, path=path)
