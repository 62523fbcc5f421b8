"""Pool-wide scoring from HDF5 at 10k, 100k and 1M images: wall time and peak memory.

    .venv/bin/python -m benchmarks.onnx_scaling   # -> benchmarks/results/onnx_scaling.{json,md}

Pools of synthetic 32x32x3 images (digits, as in onnx_throughput) are built with PoolBuilder in
``--dir`` (default /tmp, never the repository; 1M images = 3 GB). Each (preset, size) point runs
in a fresh subprocess (no torch in it) that opens the sampler, then scores every candidate with
``SamplerSession.score_pool`` (read-ahead thread, contiguous chunks); it reports wall time, the
RSS after loading and the peak RSS. Peak RSS is the child's ``VmHWM``: its ``ru_maxrss`` would
include the parent's high-water mark, which Linux carries across fork + exec. Before every
point the pool's shard files are evicted from the page cache (``posix_fadvise(DONTNEED)``,
these files' pages only), so reads hit the disk.
A read-only pass (no model) and in-memory scoring of 10k images give the two halves that the
read-ahead overlaps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.onnx_common import SHAPE, digits_rgb, machine, md_table, write_results

ROOT = Path(__file__).resolve().parents[1]


def _status_mib(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def evict(pool: Path) -> None:
    """Drop the pool's files from the page cache (clean pages of these files only)."""
    from dgaal_core.pool.schema import shard_dir

    for p in [pool, *sorted(shard_dir(pool).glob("*.h5"))]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(mode: str, model: str, pool: str, batch_size: int, threads: int) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    from dgaal_core.pool.reader import PoolReader
    from export.runtime import SamplerSession

    out: dict[str, Any] = {}
    if mode == "read":
        with PoolReader(pool) as r:
            start, n = time.perf_counter(), 0
            for ids, _images in r.iter_batches(None, batch_size, prefetch=2):
                n += ids.size
            out["seconds"] = time.perf_counter() - start
            out["images"] = n
    elif mode == "memory":  # in-memory scoring: the compute half alone
        sampler = SamplerSession(model, "cpu", threads)
        with PoolReader(pool) as r:
            images = r.read_images(np.arange(min(r.num_rows, 10_000)))
        sampler.score(images[:batch_size], batch_size)
        start = time.perf_counter()
        sampler.score(images, batch_size)
        out["seconds"] = time.perf_counter() - start
        out["images"] = images.shape[0]
    else:
        sampler = SamplerSession(model, "cpu", threads)
        out["rss_loaded_mib"] = _status_mib("VmRSS")
        res = sampler.score_pool(pool, state=None, batch_size=batch_size)
        out["seconds"], out["images"] = res.seconds, int(res.ids.size)
        out["checksum"] = float(np.sum(res.scores, dtype=np.float64))
    out["peak_rss_mib"] = _status_mib("VmHWM")
    out["torch_loaded"] = "torch" in sys.modules
    # ru_maxrss is kept for reference: Linux carries the parent's high-water mark across
    # fork + exec into it, so it over-reports for a child of a big parent; VmHWM does not.
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(mode: str, model: Path, pool: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Evict the pool from the page cache, run :func:`child` in a fresh interpreter."""
    evict(pool)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.onnx_scaling",
        "--child",
        mode,
        str(model),
        str(pool),
        str(args.batch_size),
        str(args.threads),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child {mode} {pool} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_pool(path: Path, n: int) -> Path:
    """A pool of n synthetic candidates (reused if one of that size is there already)."""
    from dgaal_core.pool.reader import PoolReader
    from dgaal_core.pool.writer import PoolBuilder

    if path.exists():
        with PoolReader(path) as r:
            if r.num_rows == n and r.image_shape == SHAPE:
                return path
    with PoolBuilder(path, SHAPE, [str(i) for i in range(10)], force=True) as b:
        for i in range(0, n, 20_000):
            b.add(digits_rgb(min(20_000, n - i), seed=i))
        b.finish()
    return path


def export_untrained(preset_name: str, pool: Path, out: Path) -> Path:
    """Freshly initialised models (speed and memory do not depend on the weights)."""
    from dgaal_core.pool.reader import PoolReader
    from export.pipeline import export_round, load_models, sample_pool_images

    models = load_models(pool, untrained_preset=preset_name)
    with PoolReader(pool) as r:
        images = sample_pool_images(r, 128)
    return export_round(models, out / preset_name, images).sampler


def markdown(data: dict[str, Any]) -> str:
    """Results as a Markdown table."""
    rows = []
    for p in data["points"]:
        rows.append(
            [
                p["preset"],
                f"{p['images']:,}",
                f"{p['seconds']:.1f}",
                f"{p['images_per_s']:,.0f}",
                f"{p['rss_loaded_mib']:.0f}",
                f"{p['peak_rss_mib']:.0f}",
                f"{p['read_only_seconds']:.1f}",
            ]
        )
    mem = [[k, f"{v['images_per_s']:,.0f}"] for k, v in data["in_memory"].items()]
    return "\n".join(
        [
            "# Pool-wide scoring from HDF5 (onnxruntime fp32, CPU), 32x32x3",
            "",
            f"CPU: {data['machine']['cpu']}, {data['threads']} threads, "
            f"batch {data['batch_size']}, "
            "pool files evicted from the page cache before each point, each point in a fresh "
            "process. Shared machine: other jobs ran alongside, so compare sizes, not runs.",
            "",
            md_table(
                [
                    "preset",
                    "images",
                    "wall s",
                    "images/s",
                    "RSS loaded MiB",
                    "peak RSS MiB",
                    "read-only pass s",
                ],
                rows,
            ),
            "In-memory scoring of 10k images (compute alone, no reading):",
            "",
            md_table(["preset", "images/s"], mem),
            data.get("note", ""),
            "",
        ]
    )


def main() -> None:
    """Build pools, export models, measure every point, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=5, metavar=("MODE", "MODEL", "POOL", "BATCH", "THREADS"))
    ap.add_argument("--dir", default="/tmp/dgaal-scaling")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="for the small preset")
    ap.add_argument("--paper-sizes", default="10000,100000")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the pools for another run")
    args = ap.parse_args()
    if args.child:
        mode, model, pool, bs, threads = args.child
        child(mode, model, pool, int(bs), int(threads))
        return
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    plan = [("small", int(s)) for s in args.sizes.split(",") if s]
    plan += [("paper", int(s)) for s in args.paper_sizes.split(",") if s]
    sizes = sorted({n for _, n in plan})
    need = sum(n * int(np.prod(SHAPE)) for n in sizes) * 1.1
    free = shutil.disk_usage(work).free
    if need > free:
        sys.exit(f"{work}: needs {need / 2**30:.1f} GiB for the pools, {free / 2**30:.1f} free")
    pools = {}
    for n in sizes:
        t = time.perf_counter()
        pools[n] = make_pool(work / f"pool-{n}.h5", n)
        print(f"pool {n:,}: ready in {time.perf_counter() - t:.0f} s", flush=True)
    data: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "points": [],
        "in_memory": {},
    }
    with tempfile.TemporaryDirectory(prefix="dgaal-scaling-") as tmp:
        models = {p: export_untrained(p, pools[sizes[0]], Path(tmp)) for p in ("small", "paper")}
        for p in ("small", "paper"):
            r = run_child("memory", models[p], pools[sizes[0]], args)
            data["in_memory"][p] = {"images_per_s": r["images"] / r["seconds"]}
        for preset_name, n in plan:
            read = run_child("read", models[preset_name], pools[n], args)
            r = run_child("score", models[preset_name], pools[n], args)
            r.update(
                preset=preset_name,
                images_per_s=r["images"] / r["seconds"],
                read_only_seconds=read["seconds"],
            )
            data["points"].append(r)
            print(json.dumps(r), flush=True)
    data["note"] = (
        "The paper preset stops at the largest of --paper-sizes: at its speed on 2 cores a 1M "
        "pass takes about an hour, so 1M is measured with the small preset."
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    j, m = write_results("onnx_scaling", data, markdown(data))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
