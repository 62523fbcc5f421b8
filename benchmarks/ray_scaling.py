"""Pool-wide scoring through Ray Data vs the local runtime, and the driver's memory in pool size.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ray_scaling
    # -> benchmarks/results/ray_scaling.{json,md}

Same pool, same `small` sampler, one onnxruntime thread per session, each point in a fresh
process with the pool evicted from the page cache (as in onnx_scaling):
- local: ``SamplerSession.score_pool`` (a read-ahead thread + one session);
- Ray, 1 worker: ``score_pool_ray`` on a local Ray with 2 logical CPUs (one actor, one CPU left
  for the read tasks);
- Ray, 2 workers: 3 logical CPUs (two actors + reads) on the same 2 cores: oversubscribed here,
  so it shows the pipeline's overhead, not a speed-up; on a real cluster each worker is a core
  or a GPU of its own.
Ray's start-up (``ray.init``, seconds) is reported apart from the scoring pass. The driver's peak
RSS (``VmHWM``) is measured at 10k, 100k and 1M images with 1 worker: it holds only ids and
scores (12 bytes per image), never images. Pools are built in ``--dir`` (default: the temp
dir; 1M images = 3 GB) and reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.onnx_common import RESULTS, machine, md_table, untrained_sampler, write_results
from benchmarks.onnx_scaling import _status_mib, evict, make_pool

ROOT = Path(__file__).resolve().parents[1]
COMPARE_HEADER = [
    "engine",
    "images",
    "scoring s",
    "images/s",
    "vs local",
    "ray start s",
    "driver peak RSS MiB",
]


def child(mode: str, model: str, pool: str, workers: int) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    from export.distributed import RayOptions, connect, score_pool_ray
    from export.runtime import SamplerSession

    out: dict[str, Any] = {"rss_start_mib": _status_mib("VmRSS")}
    if mode == "local":
        res = SamplerSession(model, "cpu", 1).score_pool(pool, state=None, batch_size=256)
    else:
        opts = RayOptions(workers=workers, num_cpus=workers + 1, batch_size=256)
        t = time.perf_counter()
        connect(opts)
        out["ray_start_seconds"] = time.perf_counter() - t
        res = score_pool_ray(model, pool, state=None, options=opts)
    out["seconds"], out["images"] = res.seconds, int(res.ids.size)
    out["checksum"] = float(np.sum(res.scores, dtype=np.float64))
    out["driver_peak_rss_mib"] = _status_mib("VmHWM")
    out["torch_loaded"] = "torch" in sys.modules
    print(json.dumps(out))


def run_child(mode: str, model: Path, pool: Path, workers: int) -> dict[str, Any]:
    evict(pool)
    cmd = [sys.executable, "-m", "benchmarks.ray_scaling", "--child", mode, str(model),
           str(pool), str(workers)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"child {mode} {pool} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown; also fills in the overheads in ``data``."""
    compare, rss, m = data["compare"], data["driver_rss"], data["machine"]
    local_s = compare["local"]["seconds"] / compare["local"]["images"]  # seconds per image
    rows = []
    for name, v in compare.items():
        ips = v["images"] / v["seconds"]
        rows.append([
            name, f"{v['images']:,}", f"{v['seconds']:.1f}", f"{ips:,.0f}",
            f"{ips * local_s:.2f}", f"{v.get('ray_start_seconds', 0):.1f}",
            f"{v['driver_peak_rss_mib']:.0f}",
        ])  # fmt: skip
    points = sorted((int(n), v) for n, v in rss.items())
    rss_rows = [
        [f"{n:,}", f"{v['seconds']:.1f}", f"{v['images'] / v['seconds']:,.0f}",
         f"{v['driver_peak_rss_mib']:.0f}"]
        for n, v in points
    ]  # fmt: skip
    ray1 = compare["ray-1"]
    overhead = ray1["seconds"] / ray1["images"] / local_s - 1
    (n0, a), (n1, b) = points[-2], points[-1]
    marginal = (b["seconds"] - a["seconds"]) / (n1 - n0) / local_s - 1
    per_image = (b["driver_peak_rss_mib"] - points[0][1]["driver_peak_rss_mib"]) * 2**20
    per_image /= n1 - points[0][0]
    data["ray_1_worker_overhead"] = round(overhead, 4)
    data["ray_1_worker_marginal_overhead"] = round(marginal, 4)
    data["driver_rss_bytes_per_image"] = round(per_image, 1)
    return (
        "# Pool-wide scoring through Ray Data vs local (CPU, `small` preset, 32x32x3)\n\n"
        f"{m['cpu']}, 2 cores, onnxruntime {m['onnxruntime']}, one intra-op thread per "
        "session; each point a fresh process, the pool evicted from the page cache first. "
        "Ray: a local instance with workers + 1 logical CPUs (one CPU always left for the read "
        "tasks); 2 workers oversubscribe the 2 cores here. Ray's start-up (`ray.init`) is apart "
        "from the scoring time; the scoring time includes starting the actors. All engines "
        "return identical scores (checksums equal).\n\n"
        + md_table(COMPARE_HEADER, rows)
        + f"\nRay's overhead with one worker at {data['compare_size']:,} images: "
        f"{100 * overhead:.1f}% more time per image than local (target: under 15%); of it, "
        f"the per-image part (from the {n0:,} and {n1:,} points, fixed costs such as starting "
        f"the actor cancel out) is {100 * marginal:.1f}%.\n\n"
        "Driver memory in pool size (Ray, 1 worker). The driver never holds images (1M of them "
        "are 3 GB); it holds the pool's row index, the ids and the scores: "
        f"{per_image:.0f} bytes per image between the smallest and the largest pool.\n\n"
        + md_table(["images", "scoring s", "images/s", "driver peak RSS MiB"], rss_rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "MODEL", "POOL", "WORKERS"))
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "dgaal-scaling")
    ap.add_argument("--compare-size", type=int, default=100_000)
    ap.add_argument("--rss-sizes", default="10000,100000,1000000")
    ap.add_argument("--markdown", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    if args.markdown:
        data = json.loads((RESULTS / "ray_scaling.json").read_text())
        write_results("ray_scaling", data, markdown(data))
        return
    if args.child:
        mode, model, pool, workers = args.child
        child(mode, model, pool, int(workers))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    model = untrained_sampler("small", args.dir / "ray-model")
    sizes = sorted({args.compare_size, *(int(s) for s in args.rss_sizes.split(","))})
    pools = {n: make_pool(args.dir / f"pool-{n}.h5", n) for n in sizes}
    compare: dict[str, Any] = {}
    pool = pools[args.compare_size]
    for name, mode, workers in (("local", "local", 0), ("ray-1", "ray", 1), ("ray-2", "ray", 2)):
        compare[name] = run_child(mode, model, pool, workers)
        print(name, compare[name], flush=True)
    checksums = {v["checksum"] for v in compare.values()}
    assert len(checksums) == 1, f"the engines disagree: {checksums}"
    rss = {}
    for n in sizes:
        point = compare["ray-1"] if n == args.compare_size else run_child("ray", model, pools[n], 1)
        rss[n] = point
        print(n, point, flush=True)

    data = {
        "machine": machine(),
        "compare_size": args.compare_size,
        "compare": compare,
        "driver_rss": {str(n): v for n, v in rss.items()},
    }
    md = markdown(data)
    for f in write_results("ray_scaling", data, md):
        print(f"wrote {f}")


if __name__ == "__main__":
    main()
