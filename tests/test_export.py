"""ONNX export: graphs, metadata, parity checks, int8/fp16 variants, Triton files, checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pools import random_pool

from dgaal_core.loop.workdir import CHECKPOINT_FILE, round_dir, work_dir
from dgaal_core.model.config import config_hash, preset
from dgaal_core.model.networks import build_models
from dgaal_core.model.noise import noise_range, noise_scales
from dgaal_core.pool.reader import PoolReader
from export import names
from export.cascade import cascade_scores
from export.errors import (
    CheckpointNotFoundError,
    ExportParityError,
    ModelFileError,
    ModelMismatchError,
)
from export.metadata import update_metadata
from export.onnx_export import (
    SamplerGraph,
    check_generator_parity,
    check_sampler_parity,
    export_generator,
    export_sampler,
    fresh_d1,
    fresh_generator,
)
from export.pipeline import ExportedModels, export_round, load_models, sample_pool_images
from export.quantize import quantize_sampler_int8, selection_agreement
from export.runtime import GeneratorSession, SamplerSession, select_lowest

CLASSES = [str(i) for i in range(10)]


def make_pool(path: Path, shape: tuple[int, int, int], n: int = 120, seed: int = 0) -> np.ndarray:
    return random_pool(path, shape, n, seed, initial=0.1)


def untrained(shape: tuple[int, int, int], name: str = "small", seed: int = 0) -> ExportedModels:
    config = preset(name, shape, 10).model
    m = build_models(config, seed)
    return ExportedModels(m.g, m.d1, config, 3, "test")


def images_of(shape: tuple[int, int, int], n: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


CASES = [
    ("small", (8, 8, 1)),
    ("small", (28, 28, 1)),
    ("small", (32, 32, 3)),
    ("paper", (8, 8, 1)),
    ("paper", (16, 16, 3)),
]


@pytest.mark.parametrize(("preset_name", "shape"), CASES)
def test_export_matches_pytorch_for_presets_and_shapes(tmp_path, preset_name, shape):
    models = untrained(shape, preset_name)
    images = images_of(shape)
    report = export_round(models, tmp_path, images)
    assert report.sampler == tmp_path / names.SAMPLER_FILE
    assert report.sampler_parity.score_max_abs_diff <= 1e-5
    assert report.generator_parity.max_pixel_diff <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [names.GENERATOR_FILE, names.SAMPLER_FILE]

    sampler, gen = SamplerSession(report.sampler, "cpu"), GeneratorSession(report.generator, "cpu")
    scores, latents = sampler.score(images[:5])  # a batch size other than the export's
    assert scores.shape == (5,) and scores.dtype == np.float32
    assert latents.shape == (5, models.config.latent_dim)
    assert np.all((scores > 0) & (scores < 1))
    noise = gen.draw_noise_scales(0)
    assert noise.shape == (models.g.noise_channels,)
    out = gen.generate(images[:7], noise)
    assert out.shape == (7, *shape) and out.dtype == np.uint8


def test_graph_io_names_dynamic_batch_and_metadata(tmp_path):
    models = untrained((8, 8, 1))
    report = export_round(models, tmp_path, images_of((8, 8, 1)))
    s = onnx.load(str(report.sampler))
    g = onnx.load(str(report.generator))
    assert [i.name for i in s.graph.input] == list(names.SAMPLER_INPUTS)
    assert [o.name for o in s.graph.output] == list(names.SAMPLER_OUTPUTS)
    assert [i.name for i in g.graph.input] == list(names.GENERATOR_INPUTS)
    assert [o.name for o in g.graph.output] == list(names.GENERATOR_OUTPUTS)
    dims = s.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == names.BATCH and [d.dim_value for d in dims[1:]] == [8, 8, 1]
    assert s.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in s.graph.initializer)
    for model, kind in ((s, names.KIND_SAMPLER), (g, names.KIND_GENERATOR)):
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta[names.META_KIND] == kind
        assert meta[names.META_FORMAT] == str(names.FORMAT_VERSION)
        assert json.loads(meta[names.META_IMAGE_SHAPE]) == [8, 8, 1]
        assert meta[names.META_CHANNELS] == "1"
        assert meta[names.META_Z_DIM] == str(models.config.latent_dim)
        assert meta[names.META_NOISE_CHANNELS] == str(models.g.noise_channels)
        assert meta[names.META_ROUND] == "3"
        assert meta[names.META_CONFIG_HASH] == config_hash(models.config)
        assert meta[names.META_PRECISION] == "fp32"
        assert meta[names.META_VERSION]
        onnx.checker.check_model(model)
    # the sampler holds G1 and D1 only: no decoder weights
    assert report.sampler.stat().st_size < report.generator.stat().st_size


def test_export_leaves_caller_models_untouched(tmp_path):
    models = untrained((8, 8, 1))
    models.g.train()
    before = {k: v.clone() for k, v in models.g.state_dict().items()}
    export_round(models, tmp_path, images_of((8, 8, 1)))
    assert models.g.training  # mode unchanged
    for k, v in models.g.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_dynamo_exporter_also_passes_parity(tmp_path):
    models = untrained((8, 8, 1))
    p = export_sampler(
        models.g, models.d1, models.config, tmp_path / "s.onnx", images_of((8, 8, 1)), dynamo=True
    )
    assert p.score_max_abs_diff <= 1e-5 and p.same_selection
    assert SamplerSession(tmp_path / "s.onnx", "cpu").info.kind == names.KIND_SAMPLER


def test_parity_failure_is_loud_and_removes_the_file(tmp_path):
    models = untrained((8, 8, 1))
    images = images_of((8, 8, 1))
    path = tmp_path / "s.onnx"
    export_sampler(models.g, models.d1, models.config, path, images)
    g, d1 = fresh_generator(models.g, models.config), fresh_d1(models.d1, models.config)
    with torch.no_grad():
        d1.net[-1].bias += 0.5  # PyTorch now disagrees with the file
    with pytest.raises(ExportParityError, match="score max abs diff"):
        check_sampler_parity(path, SamplerGraph(g, d1), images)
    assert not path.exists()

    gpath = tmp_path / "g.onnx"
    export_generator(models.g, models.config, gpath, images)
    from export.onnx_export import GeneratorGraph

    g2 = fresh_generator(models.g, models.config)
    with torch.no_grad():
        g2.g2.out.bias += 0.5
    noise = torch.from_numpy(noise_scales(0, g2.noise_channels, *noise_range()))
    with pytest.raises(ExportParityError, match="pixels differ"):
        check_generator_parity(gpath, GeneratorGraph(g2), images, noise)
    assert not gpath.exists()


def test_failed_export_keeps_previous_files(tmp_path, monkeypatch):
    models = untrained((8, 8, 1))
    images = images_of((8, 8, 1))
    export_round(models, tmp_path, images)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args, **kwargs):
        raise ExportParityError("generator parity failed (simulated)")

    monkeypatch.setattr("export.pipeline.export_generator", broken)
    other = untrained((8, 8, 1), seed=5)
    with pytest.raises(ExportParityError):
        export_round(other, tmp_path, images)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp dir left


def test_int8_accepted_and_refused_paths(tmp_path):
    models = untrained((16, 16, 3))
    images = images_of((16, 16, 3), n=96)
    report = export_round(models, tmp_path, images)
    ok = quantize_sampler_int8(
        report.sampler, tmp_path / "q.onnx", images, images, min_agreement=0.0
    )
    assert ok.accepted and ok.mode == "direct" and ok.path is not None and ok.path.exists()
    s = SamplerSession(ok.path, "cpu")
    assert s.info.precision == "int8" and s.info.image_shape == (16, 16, 3)
    assert s.info.metadata[names.META_INT8_MODE] == "direct"
    assert json.loads(s.info.metadata[names.META_INT8_AGREEMENT])["n"] == ok.selected
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(ok.path)).graph.node)
    scores, _ = s.score(images)
    assert np.all(np.isfinite(scores))

    refused = quantize_sampler_int8(
        report.sampler, tmp_path / "r.onnx", images, images, min_agreement=1.01
    )
    assert not refused.accepted and refused.mode is None and refused.path is None
    assert not (tmp_path / "r.onnx").exists()
    assert "refused" in refused.message and "keeping the fp32 sampler" in refused.message


def test_cascade_sampler_rescores_the_lowest_in_fp32(tmp_path):
    shape = (8, 8, 1)
    pool = tmp_path / "pools.h5"
    make_pool(pool, shape, n=200)
    out = tmp_path / "m"
    with PoolReader(pool) as r:
        images = sample_pool_images(r, 64)
    report = export_round(untrained(shape), out, images)
    q = quantize_sampler_int8(
        report.sampler, out / names.SAMPLER_INT8_FILE, images, images, min_agreement=0.0
    )
    assert q.path is not None
    assert SamplerSession(q.path, "cpu").exact is None  # "direct": no rescoring
    update_metadata(q.path, {names.META_INT8_MODE: "cascade", names.META_RESCORE_FRACTION: "0.25"})
    cascade = SamplerSession(q.path, "cpu")  # the one way to open any sampler file
    assert cascade.exact is not None and cascade.rescore_fraction == 0.25
    res = cascade.score_pool(pool, return_latents=True)
    fast = SamplerSession(q.path, "cpu", rescore=False).score_pool(pool, return_latents=True)
    exact = SamplerSession(report.sampler, "cpu").score_pool(pool, return_latents=True)
    np.testing.assert_array_equal(res.ids, exact.ids)
    rescored = select_lowest(fast.ids, fast.scores, int(np.ceil(0.25 * fast.ids.size)))
    at = np.searchsorted(res.ids, rescored)
    np.testing.assert_allclose(res.scores[at], exact.scores[at], atol=1e-6)
    assert res.latents is not None and exact.latents is not None and fast.latents is not None
    np.testing.assert_allclose(res.latents[at], exact.latents[at], atol=1e-5)
    rest = np.setdiff1d(np.arange(res.ids.size), at)
    np.testing.assert_array_equal(res.scores[rest], fast.scores[rest])
    np.testing.assert_array_equal(res.latents[rest], fast.latents[rest])
    with PoolReader(pool) as r:
        some = r.read_images(np.arange(40))
    s_mem, z_mem = cascade.score(some)
    assert s_mem.shape == (40,) and z_mem.shape[0] == 40
    low = np.sort(
        select_lowest(
            np.arange(40), SamplerSession(q.path, "cpu", rescore=False).score(some)[0], 10
        )
    )
    np.testing.assert_allclose(
        s_mem[low], SamplerSession(report.sampler, "cpu").score(some)[0][low], atol=1e-6
    )
    with pytest.raises(ModelFileError, match="nothing to rescore"):
        SamplerSession(report.sampler, "cpu", rescore=True)
    report.sampler.unlink()
    with pytest.raises(ModelFileError, match="needs fp32 rescoring"):
        SamplerSession(q.path, "cpu")
    assert SamplerSession(q.path, "cpu", rescore=False).exact is None  # raw int8 still opens


def test_cascade_scores_recover_the_exact_selection():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=5000)
    fast = exact + rng.normal(scale=0.05, size=5000)  # int8-like noise: neighbours swap
    n = 250
    assert selection_agreement(exact, fast, n) < 0.99
    assert selection_agreement(exact, cascade_scores(fast, exact, 0.15), n) == 1.0


def test_selection_agreement():
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert selection_agreement(a, a, 2) == 1.0
    assert selection_agreement(a, a[::-1].copy(), 2) == 0.0
    assert selection_agreement(a, np.array([0.1, 0.9, 0.3, 0.2, 0.5]), 2) == 0.5


def test_fp16_and_triton_repository(tmp_path):
    models = untrained((8, 8, 1))
    report = export_round(
        models, tmp_path / "out", images_of((8, 8, 1)), fp16=True, triton_dir=tmp_path / "triton"
    )
    assert [p.name for p in report.fp16] == [names.SAMPLER_FP16_FILE, names.GENERATOR_FP16_FILE]
    assert SamplerSession(report.fp16[0], "cpu").info.precision == "fp16"
    for model in (names.TRITON_SAMPLER, names.TRITON_GENERATOR):
        assert (tmp_path / "triton" / model / "1" / "model.onnx").is_file()
    cfg = (tmp_path / "triton" / names.TRITON_SAMPLER / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "max_batch_size: 1024" in cfg
    assert "dynamic_batching" in cfg and "dims: [8, 8, 1]" in cfg and "TYPE_UINT8" in cfg
    gcfg = (tmp_path / "triton" / names.TRITON_GENERATOR / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in gcfg and "dims: [-1, 8, 8, 1]" in gcfg
    assert f"dims: [{models.g.noise_channels}]" in gcfg


def test_load_models_from_round_checkpoint(tmp_path):
    from dgaal_core.model.checkpoint import save_checkpoint
    from dgaal_core.model.training import DGAALTrainer

    pool = tmp_path / "pools.h5"
    make_pool(pool, (8, 8, 1))
    with pytest.raises(CheckpointNotFoundError, match="no round has finished there"):
        load_models(pool)
    trainer = DGAALTrainer.create(preset("small", (8, 8, 1), 10), device="cpu")
    with torch.no_grad():
        trainer.models.d1.net[0].bias += 1.0  # weights that differ from a fresh init
    save_checkpoint(round_dir(work_dir(pool), 2) / CHECKPOINT_FILE, trainer, round_index=2)
    models = load_models(pool)
    assert models.round_index == 2
    assert torch.equal(models.d1.net[0].bias, trainer.models.d1.net[0].bias)
    with PoolReader(pool) as r:
        images = sample_pool_images(r, 32)
    report = export_round(models, round_dir(work_dir(pool), 2), images)
    assert SamplerSession(report.sampler, "cpu").info.round == 2
    with pytest.raises(CheckpointNotFoundError):
        load_models(pool, round_index=7)

    other = tmp_path / "other.h5"
    make_pool(other, (8, 8, 3))
    ckpt = round_dir(work_dir(pool), 2) / CHECKPOINT_FILE
    with pytest.raises(ModelMismatchError, match=r"\[8, 8, 1\] images"):
        load_models(other, checkpoint=ckpt)


def test_parametrizations_are_baked_into_plain_weights():
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    from export.onnx_export import bake_parametrizations

    torch.manual_seed(0)
    layer = spectral_norm(torch.nn.Linear(6, 4))
    layer(torch.randn(3, 6))  # one power iteration in train mode
    layer.eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        want = layer(x)
    baked = bake_parametrizations(layer)
    assert not parametrize.is_parametrized(baked)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), want)


def test_the_generator_carries_the_noise_range_it_was_exported_with(tmp_path):
    models = dataclasses.replace(untrained((8, 8, 1)), noise_spread=0.2)
    report = export_round(models, tmp_path, images_of((8, 8, 1)))
    gen = GeneratorSession(report.generator, "cpu")
    assert gen.info.noise_range == pytest.approx((0.8, 1.2))
    scales = gen.draw_noise_scales(3)
    assert scales.min() >= 0.8 and scales.max() < 1.2 and (scales < 0.95).any()
    np.testing.assert_array_equal(scales, noise_scales(3, gen.noise_channels, 0.8, 1.2))
    paper = GeneratorSession(
        export_round(untrained((8, 8, 1)), tmp_path / "p", images_of((8, 8, 1))).generator, "cpu"
    )
    assert paper.info.noise_range == pytest.approx((0.95, 1.05))  # the paper's, by default
