"""The sampler behind HTTP (examples/score_service.py) vs the runtime called in-process.

Same model, same images, same onnxruntime thread count, in one run: for each preset and batch
size, images/s of ``SamplerSession.score`` in this process and of POST /score to the service on
127.0.0.1 (one keep-alive connection, requests one after another; the client's .npy encoding
and JSON decoding are counted, as a real caller pays them). The two are timed in turn (A B A B)
so machine noise hits both alike; best time of each. Writes benchmarks/results/serve_throughput
.json and .md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_throughput.py [--threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx_common import (
    digits_rgb,
    interleaved_best,
    machine,
    md_table,
    untrained_sampler,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
HEADER = [
    "preset",
    "batch",
    "in-process images/s",
    "HTTP images/s",
    "HTTP / in-process",
    "HTTP overhead ms/request",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """POST /score over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def score(self, images: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        np.save(buf, images)
        for attempt in (1, 2):  # uvicorn closes idle keep-alive connections after 5 s: reconnect
            try:
                self.conn.request(
                    "POST", "/score", buf.getvalue(), {"content-type": "application/x-npy"}
                )
                r = self.conn.getresponse()
                body = r.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt == 2:
                    raise
        if r.status != 200:
            raise RuntimeError(f"service answered {r.status}: {body[:200]!r}")
        return np.asarray(json.loads(body)["scores"], np.float32)


def start_service(model: Path, port: int, threads: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "score_service.py"), "--model", str(model),
         "--port", str(port), "--provider", "cpu", "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read() if proc.stdout else "service died")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not answer within 60 s")


def time_both(
    sampler: Any, client: Client, batches: list[np.ndarray], bs: int, repeats: int
) -> dict[str, float]:
    """Best seconds for one pass over ``batches``: in-process and over HTTP, interleaved."""

    def in_process() -> None:
        for b in batches:
            sampler.score(b, bs)

    def over_http() -> None:
        for b in batches:
            client.score(b)

    return interleaved_best({"in_process": in_process, "http": over_http}, repeats, 2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", default="small,paper")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--images", type=int, default=1024, help="images per timed pass")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from export.runtime import SamplerSession

    rows, data = [], {"machine": machine(), "threads": args.threads, "points": []}
    data["machine"]["cpu_count"] = os.cpu_count()
    data["load_average_at_start"] = round(os.getloadavg()[0], 2)
    for preset_name in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model = untrained_sampler(preset_name, Path(tmp))
            sampler = SamplerSession(model, provider="cpu", threads=args.threads)
            port = free_port()
            proc = start_service(model, port, args.threads)
            try:
                client = Client(port)
                for bs in (int(b) for b in args.batches.split(",")):
                    n = max(bs, args.images // bs * bs)
                    images = digits_rgb(n, seed=1)
                    batches = [images[i : i + bs] for i in range(0, n, bs)]
                    want = np.concatenate([sampler.score(b, bs)[0] for b in batches])
                    got = np.concatenate([client.score(b) for b in batches])
                    np.testing.assert_array_equal(got, want)  # same numbers, not just speed

                    best = time_both(sampler, client, batches, bs, args.repeats)
                    ips = {k: n / v for k, v in best.items()}
                    point = {
                        "preset": preset_name,
                        "batch": bs,
                        "images": n,
                        "in_process_images_per_s": round(ips["in_process"], 1),
                        "http_images_per_s": round(ips["http"], 1),
                        "http_over_in_process": round(ips["http"] / ips["in_process"], 3),
                        "http_ms_per_request": round(1000 * best["http"] / len(batches), 2),
                        "in_process_ms_per_batch": round(
                            1000 * best["in_process"] / len(batches), 2
                        ),
                    }
                    data["points"].append(point)
                    rows.append([
                        preset_name, bs, f"{ips['in_process']:,.0f}", f"{ips['http']:,.0f}",
                        f"{point['http_over_in_process']:.2f}",
                        f"{point['http_ms_per_request'] - point['in_process_ms_per_batch']:.2f}",
                    ])  # fmt: skip
                    print(point, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    m = data["machine"]
    data["load_average_at_end"] = round(os.getloadavg()[0], 2)
    md = (
        "# The sampler over HTTP vs in-process (CPU, 32x32x3)\n\n"
        f"{m['cpu']}, {m['cpu_count']} cores; onnxruntime {m['onnxruntime']} with "
        f"{args.threads} intra-op thread(s) on both sides. `examples/score_service.py` "
        "(Starlette on uvicorn) on 127.0.0.1, one keep-alive client sending .npy bodies one "
        "request at a time; in-process is `SamplerSession.score` on the same batches. Best of "
        f">= {args.repeats} interleaved passes over {args.images} images. Scores over HTTP "
        "are checked equal to in-process ones. 1-minute load average "
        f"{data['load_average_at_start']} at the start, {data['load_average_at_end']} at the end; "
        "ratios within about 0.07 of 1 are noise (both sides run the same graph on one thread "
        "each, so HTTP can come out a little ahead).\n\n"
        + md_table(HEADER, rows)
        + "\nThe overhead per request has a fixed part (the batch-1 rows: the loopback round "
        "trip and the request handling) and a part that grows with the body (the .npy encoding, "
        "copying and decoding, the JSON of the scores); against a heavier model both weigh less. "
        "Send batches.\n"
    )
    for f in write_results("serve_throughput", data, md):
        print(f"wrote {f}")


if __name__ == "__main__":
    main()
