"""``dgaal pool embed --train``: an encoder trained on the pool's own images (SimCLR), exported to
ONNX and used as any encoder is; seeded, capped by --minutes, refused in one line when misused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pools import assert_one_line_error, class_images, cli, random_pool

from dgaal_core.model.data import ArraySource
from dgaal_core.model.ssl import SSLConfig, nt_xent, train_ssl_encoder, views
from dgaal_core.pool.check import check_pool
from dgaal_core.pool.embeddings import embed_dir, open_embeddings
from dgaal_core.pool.reader import PoolReader


def _embedded(pool: Path, *args: str) -> np.ndarray:
    ran = cli("pool", "embed", pool, "--train", "--steps", "3", *args)
    assert ran.code == 0, ran
    assert "trained the encoder on" in ran.stdout and "NT-Xent" in ran.stdout, ran.stdout
    emb = open_embeddings(pool)
    assert emb is not None
    return emb.split("pool").astype(np.float32)


def test_a_trained_encoder_embeds_the_pool_reproducibly(tmp_path: Path) -> None:
    pools = [tmp_path / f"{name}.h5" for name in ("a", "b", "c")]
    for p in pools:
        random_pool(p, (16, 16, 3), n=120, test=20)
    a, b = _embedded(pools[0]), _embedded(pools[1])
    np.testing.assert_array_equal(a, b)  # the same seed: the same encoder, the same vectors
    c = _embedded(pools[2], "--seed", "1")
    assert a.shape == c.shape == (120, 256) and not np.allclose(a, c)
    emb = open_embeddings(pools[0])
    assert emb is not None and emb.rows("test") == 20
    assert emb.manifest.encoder["name"] == "dgaal-simclr-w32 (3 steps on a.h5, seed 0)"
    assert all(f.status == "ok" for f in check_pool(pools[0]))
    assert not list(tmp_path.glob(".encoder-*"))  # the export's scratch folder is gone
    # the ONNX kept beside the pool computes what PyTorch computed (float16 as stored)
    from export.encoder import EncoderSession

    with PoolReader(pools[0]) as r:
        images = r.read_images(r.ids()[:16])
    again = EncoderSession(emb.encoder_path, provider="cpu").embed(images)
    np.testing.assert_allclose(again, a[:16], rtol=2e-2, atol=2e-2)


def test_grey_pools_train_without_colour_views(tmp_path: Path) -> None:
    pool = tmp_path / "p.h5"
    assert cli("pool", "create", pool, "--from", "digits", "--initial", "0.1").code == 0
    assert _embedded(pool).shape[1] == 256
    x = torch.rand(4, 1, 8, 8)
    v = views(x, torch.Generator().manual_seed(0))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_simclr_learns_and_minutes_cap_the_steps() -> None:
    images, _ = class_images(96)
    rgb = ArraySource(np.repeat(images, 3, axis=3))
    _, report = train_ssl_encoder(rgb, SSLConfig(steps=30, batch_size=32, width=8))
    assert report.steps == 30 and not report.stopped_by_time
    assert report.last_loss < report.first_loss - 0.1, report
    _, capped = train_ssl_encoder(rgb, SSLConfig(steps=10**6, minutes=1e-4, width=8))
    assert capped.stopped_by_time and capped.steps < 10**6
    # the loss is SimCLR's: a view that matches its twin costs less than a random pairing
    z = torch.randn(8, 16)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.5) < nt_xent(z, torch.randn(8, 16), 0.5)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ("--model", "--train")),
        (("--train", "--model", "x.onnx"), ("--model", "--train")),
        (("--train", "--mean", "0.5"), ("--mean", "not with --train")),
        (("--train", "--minutes", "0"), ("--minutes 0",)),
    ],
)
def test_misused_options_are_one_line_and_write_nothing(
    tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    pool = tmp_path / "p.h5"
    random_pool(pool, (8, 8, 1), n=40)
    before = pool.read_bytes()
    assert_one_line_error(cli("pool", "embed", pool, *args), *needles, code=2)
    assert pool.read_bytes() == before and not embed_dir(pool).exists()


def test_a_pool_another_writer_holds_is_refused_before_training(tmp_path: Path) -> None:
    from dgaal_core.pool.writer import PoolWriter

    pool = tmp_path / "p.h5"
    random_pool(pool, (8, 8, 1), n=40)
    with PoolWriter(pool, purpose="a test round"):
        ran = cli("pool", "embed", pool, "--train", "--steps", "100000")  # would take minutes
    assert_one_line_error(ran, "a test round", code=2)
    assert "trained the encoder" not in ran.stdout and not embed_dir(pool).exists()
    assert not list(tmp_path.glob(".encoder-*"))
