"""examples/score_service.py: a real HTTP service (Starlette + uvicorn) on 127.0.0.1 that embeds
the sampler gives the runtime's own scores and refuses bad bodies in one line."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pools import export_untrained, random_pool

from export.runtime import SamplerSession, select_lowest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "examples" / "score_service.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/x-npy"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    images = random_pool(d / "pools.h5", shape=(8, 8, 3), n=200)
    sampler_path, _ = export_untrained(d / "model", images)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE), "--model", str(sampler_path), "--port", str(port),
         "--provider", "cpu", "--threads", "1", "--max-images", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # bounded: a service that never answers fails the test
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the service did not answer within 60 s"
            time.sleep(0.2)
        yield base, images, sampler_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_service_scores_like_the_runtime(service):
    base, images, sampler_path = service
    want, _ = SamplerSession(sampler_path, provider="cpu", threads=1).score(images[:60])
    status, got = post(base + "/score?lowest=5", npy(images[:60]))
    assert status == 200, got
    np.testing.assert_array_equal(np.asarray(got["scores"], np.float32), want)
    assert got["lowest"] == select_lowest(np.arange(60), want, 5).tolist()
    assert got["model_round"] == 1
    with urllib.request.urlopen(base + "/info", timeout=10) as r:
        info = json.loads(r.read())
    assert info["image_shape"] == [8, 8, 3] and info["provider"] == "cpu"
    assert info["max_images"] == 100 and info["rescored"] is False


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not an npy file", 400, "expected a .npy file"),
        (npy(np.zeros((2, 8, 8, 3), np.float32)), 400, "expected uint8 [n, 8, 8, 3]"),
        (npy(np.zeros((2, 8, 8, 1), np.uint8)), 400, "expected uint8 [n, 8, 8, 3]"),
        (npy(np.zeros((101, 8, 8, 3), np.uint8)), 413, "at most 100 images"),
        (npy(np.zeros((400, 8, 8, 3), np.uint8)), 413, "at most 100 images"),  # refused unread
        (npy(np.array([object()], dtype=object)), 400, "expected a .npy file"),
    ],
)
def test_service_refuses_bad_bodies(service, body, status, message):
    base, _, _ = service
    got_status, got = post(base + "/score", body)
    assert got_status == status and message in got["error"], got
    assert "\n" not in got["error"]


def test_service_refuses_bad_lowest(service):
    base, images, _ = service
    status, got = post(base + "/score?lowest=-1", npy(images[:3]))
    assert status == 400 and "lowest" in got["error"]
