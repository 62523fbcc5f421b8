"""D1 on the pool's embeddings (``--d1-input embedding``): the projection that takes G1's part,
rounds and warm starts, and the one-file ONNX sampler (raw uint8 in: preprocessing, the pool's
encoder, projection and D1 merged) against the head that scores the stored embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pools import assert_one_line_error, cli
from test_embeddings import TINY, flat_encoder, float_encoder
from test_training import blobs, small_run

from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.state import round_records
from dgaal_core.loop.workdir import round_dir, work_dir
from dgaal_core.model.checkpoint import load_checkpoint, trainer_from_checkpoint
from dgaal_core.model.config import ModelConfig
from dgaal_core.model.data import ArraySource, EmbeddedSource
from dgaal_core.model.training import DGAALTrainer
from dgaal_core.pool.embeddings import open_embeddings
from dgaal_core.pool.reader import PoolReader
from export import names
from export.embedding_sampler import HeadSession, export_embedding_sampler
from export.errors import ModelMismatchError
from export.runtime import SamplerSession


@pytest.fixture
def embedded(tmp_path: Path) -> Path:
    """The digits with 10% labelled, embedded as their raw pixels (64-d)."""
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    assert cli("pool", "embed", pool, "--model", flat_encoder(tmp_path / "f.onnx")).code == 0
    return pool


def _embedding_run(dim: int):
    run = small_run()
    model = type(run.model).from_dict(run.model.to_dict() | {"embedding_dim": dim})
    return type(run)(model=model, train=run.train)


def test_d1_separates_pools_that_differ_only_in_their_embeddings() -> None:
    """The images of both pools are drawn alike; only the embeddings tell them apart, so only a
    D1 that reads them (through the projection) can learn the split."""
    rng = np.random.default_rng(0)

    def emb(n: int, shift: float) -> np.ndarray:
        e = rng.normal(0, 1, (n, 12)).astype(np.float32) * 50  # large scale: standardised by P
        e[:, :3] += shift * 50
        return e

    labelled = EmbeddedSource(ArraySource(blobs(64, 1)), emb(64, 2.0))
    unlabelled = EmbeddedSource(ArraySource(blobs(96, 2)), emb(96, -2.0))
    run = _embedding_run(12)
    trainer = DGAALTrainer.create(
        run, "cpu", scale=np.concatenate([labelled.embeddings, unlabelled.embeddings])
    )
    assert trainer.models.proj is not None
    trainer.train_gan(labelled, unlabelled, steps=20)
    trainer.co_evolve_d1(labelled, unlabelled, steps=80)
    proj, d1 = trainer.models.proj.eval(), trainer.models.d1.eval()
    with torch.no_grad():
        p_l, p_u = (d1(proj(torch.from_numpy(emb(64, s)))) for s in (2.0, -2.0))
    auc = float((p_l[:, None] > p_u[None, :]).float().mean())
    assert auc > 0.95, auc
    with pytest.raises(Exception, match="EmbeddedSource"):  # plain rows: no embeddings to read
        trainer.co_evolve_d1(ArraySource(blobs(8, 3)), unlabelled, steps=1)
    with pytest.raises(Exception, match="standardise"):
        DGAALTrainer.create(run, "cpu")


def test_a_round_with_d1_on_embeddings_exports_one_sampler_file(
    embedded: Path, tmp_path: Path
) -> None:
    args = ["--task-model", "linear", "--budget", "40", *TINY]
    ran = cli("round", "--pool", embedded, *args)  # --d1-input auto: the pool has embeddings
    assert ran.code == 0 and "D1 reads" in ran.stdout + ran.stderr, ran
    with PoolReader(embedded) as r:
        assert round_records(r)[-1].config.d1_input == "embedding"  # recorded as resolved
    rdir = round_dir(work_dir(embedded), 1)
    sampler, head = rdir / names.SAMPLER_FILE, rdir / names.SAMPLER_HEAD_FILE
    meta = {p.key: p.value for p in onnx.load(str(sampler)).metadata_props}
    assert meta[names.META_D1_INPUT] == "embedding" and meta[names.META_KIND] == names.KIND_SAMPLER
    assert meta[names.META_ENCODER] == open_embeddings(embedded).manifest.encoder["name"]
    ckpt = load_checkpoint(rdir / "checkpoint.pt")
    assert ckpt["config"]["model"]["embedding_dim"] == 64 and "proj" in ckpt["models"]
    # the one file scores raw pixels as the head scores the stored embeddings (float16 there)
    emb = open_embeddings(embedded)
    assert emb is not None
    with PoolReader(embedded) as r:
        ids = r.ids()[:300]
        images = r.read_images(ids)
    s_one, z_one = SamplerSession(sampler, provider="cpu").score(images)
    s_head, z_head = HeadSession(head, provider="cpu").score(emb.pool(ids))
    np.testing.assert_allclose(s_one, s_head, atol=2e-3)
    np.testing.assert_allclose(z_one, z_head, atol=2e-2)
    assert z_one.shape == (300, ModelConfig.from_dict(ckpt["config"]["model"]).latent_dim)
    # the next round warm-starts from this one: P kept as it is, D1 co-evolved (Eq. 9)
    ran = cli("round", "--pool", embedded, "--d1-input", "embedding", *args)
    assert ran.code == 0, ran
    after = load_checkpoint(round_dir(work_dir(embedded), 2) / "checkpoint.pt")["models"]
    assert all(torch.equal(v, ckpt["models"]["proj"][k]) for k, v in after["proj"].items())
    assert not all(torch.equal(v, ckpt["models"]["d1"][k]) for k, v in after["d1"].items())
    # `dgaal export` makes the same kind of file from a checkpoint: D1 after round 1's Eq. 9
    out = tmp_path / "exported"
    ran = cli("export", "--pool", embedded, "--round", "1", "--out", out)
    assert ran.code == 0, ran
    s_again, _ = SamplerSession(out / names.SAMPLER_FILE, provider="cpu").score(images)
    m = trainer_from_checkpoint(ckpt, device="cpu").models
    assert m.proj is not None
    with torch.no_grad():
        e = torch.from_numpy(emb.pool(ids).astype(np.float32))
        ref = m.d1.eval()(m.proj.eval()(e)).numpy()
    np.testing.assert_allclose(s_again, ref, atol=2e-3)
    assert np.abs(s_again - s_one).max() > 1e-4  # co-evolution moved D1 after the selection
    assert (out / names.SAMPLER_HEAD_FILE).is_file() and "P + D1" in ran.stdout
    ran = cli("export", "--pool", embedded, "--round", "1", "--out", tmp_path / "x8", "--int8")
    assert_one_line_error(ran, "--int8", "no int8 or fp16 variant", code=2)
    assert not (tmp_path / "x8").exists()


def test_auto_reads_embeddings_only_where_the_pool_has_them() -> None:
    assert RoundConfig().d1_input == "auto"
    assert RoundConfig().with_d1_input(True).d1_input == "embedding"
    assert RoundConfig().with_d1_input(False).d1_input == "image"
    assert RoundConfig(d1_input="image").with_d1_input(True).d1_input == "image"
    # a round recorded before the setting existed read G1's latent
    old = {k: v for k, v in RoundConfig().to_dict().items() if k != "d1_input"}
    assert RoundConfig.from_dict(old).d1_input == "image"


def test_d1_on_embeddings_needs_them_and_says_so_before_writing(tmp_path: Path) -> None:
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    before = pool.read_bytes()
    ran = cli("round", "--pool", pool, "--d1-input", "embedding", *TINY)
    assert_one_line_error(ran, "--d1-input embedding", "dgaal pool embed", code=2)
    assert pool.read_bytes() == before and not work_dir(pool).exists()
    ran = cli("round", "--pool", pool, "--d1-input", "pixels", *TINY)
    assert ran.code == 2 and "--d1-input" in ran.stdout + ran.stderr


def test_the_one_file_sampler_prepares_pixels_as_the_embedding_did(tmp_path: Path) -> None:
    """A float NCHW encoder of 16x16 RGB under 8x8 grey images: the merged graph repeats the
    channel, resizes, scales and normalises as ``dgaal pool embed`` does in numpy."""
    from export.encoder import EncoderSession, InputSpec

    images = blobs(96, 0)
    model = float_encoder(tmp_path / "gap.onnx", size=16)
    spec = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    enc = EncoderSession(model, provider="cpu", spec=InputSpec.from_dict(spec))
    e = enc.embed(images)
    run = _embedding_run(int(e.shape[1]))
    trainer = DGAALTrainer.create(
        run, "cpu", scale=e + np.random.default_rng(0).normal(0, 0.1, e.shape)
    )
    m = trainer.models
    assert m.proj is not None
    sampler, head = tmp_path / "sampler.onnx", tmp_path / "head.onnx"
    parity = export_embedding_sampler(
        m.proj, m.d1, run.model, model, spec, sampler, head, images
    )  # fmt: skip
    assert parity.score_max_abs_diff <= 2e-3 and parity.images == 96
    s_one, _ = SamplerSession(sampler, provider="cpu").score(images)
    with torch.no_grad():
        ref = m.d1.eval()(m.proj.eval()(torch.from_numpy(e))).numpy()
    np.testing.assert_allclose(s_one, ref, atol=2e-3)
    # an encoder of another width than D1 was trained on is refused, and nothing is written
    other = _embedding_run(5)
    with pytest.raises(ModelMismatchError, match="3-d embeddings"):
        export_embedding_sampler(
            DGAALTrainer.create(other, "cpu", scale=np.ones((4, 5))).models.proj,  # type: ignore[arg-type]
            m.d1, other.model, model, spec, tmp_path / "s2.onnx", tmp_path / "h2.onnx", images,
        )  # fmt: skip
    assert not (tmp_path / "s2.onnx").exists()
