"""Training throughput per step type (G1, D1, G, D2, T and a full Algorithm-1 iteration).

Both presets at 32x32x3 (CIFAR-sized), measured side by side in one run on the CPU (with one
thread and with all of them) and, when present, on CUDA; plus the machine's fp32 matmul GFLOP/s
for context. Images/s counts the images a step reads: G1 and D1 read x_L and x_U (2B), G reads
x_r (B), D2 reads x_r and x_g (2B), T reads a labelled batch (B); a full iteration (the sum of
the four steps) counts x_r images (B). Batches are already model tensors (the uint8 -> float
conversion is not timed).

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--out benchmarks/results]

Writes ``train_throughput_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dgaal_core.model.config import RunConfig, preset
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.task import task_optimizer, task_step
from dgaal_core.model.training import DGAALTrainer

SHAPE = (32, 32, 3)
CLASSES = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_interleaved(
    fn: Callable[[], object], device: torch.device, threads: list[int], warmup: int, iters: int
) -> dict[int, float]:
    """Fewest seconds per call of ``fn`` for each torch thread count, the counts taking turns call
    by call (so load from other processes hits every count alike; the minimum, because other
    processes only ever add time)."""
    best = dict.fromkeys(threads, float("inf"))
    for n in threads:
        torch.set_num_threads(n)
        for _ in range(warmup):
            fn()
    _sync(device)
    for _ in range(iters):
        for n in threads:
            torch.set_num_threads(n)
            best[n] = min(best[n], _timed(fn, device))
    return best


def matmul_gflops(device: torch.device, n: int = 2048, iters: int = 10) -> float:
    """fp32 matmul throughput of ``device`` in GFLOP/s (n x n @ n x n, 2 n^3 flops)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g).to(device)
    b = torch.rand(n, n, generator=g).to(device)
    threads = torch.get_num_threads()
    seconds = time_interleaved(lambda: a @ b, device, [threads], warmup=2, iters=iters)[threads]
    return 2 * n**3 / seconds / 1e9


def bench_preset(
    name: str, run: RunConfig, device: torch.device, threads: list[int], warmup: int, iters: int
) -> list[dict]:
    """Rows (one per step type and thread count) for one preset on one device."""
    trainer = DGAALTrainer.create(run, device)
    b = run.train.batch_size
    g = torch.Generator().manual_seed(0)
    h, w, c = SHAPE
    x_l, x_u, x_r = ((torch.rand(b, c, h, w, generator=g) * 2 - 1).to(device) for _ in range(3))
    _, x_g = trainer.step_g(x_r)
    task = build_task_model(run.model, 0).to(device).train()
    opt_t = task_optimizer(task, run.train)
    y = (torch.arange(b) % CLASSES).to(device)
    steps: list[tuple[str, int, Callable[[], object]]] = [
        ("G1 (Eq. 4)", 2 * b, lambda: trainer.step_g1(x_l, x_u)),
        ("D1 (Eq. 4)", 2 * b, lambda: trainer.step_d1(x_l, x_u)),
        ("G (Eq. 8)", b, lambda: trainer.step_g(x_r)),
        ("D2 (Eq. 6)", 2 * b, lambda: trainer.step_d2(x_r, x_g)),
        (f"T ({run.model.task_kind})", b, lambda: task_step(task, opt_t, x_r, y)),
    ]
    rows = []
    total = dict.fromkeys(threads, 0.0)
    for step, images, fn in steps:
        best = time_interleaved(fn, device, threads, warmup, iters)
        for n, seconds in best.items():
            rows.append(_row(name, device, n, step, b, images, seconds, iters))
            if not step.startswith("T"):
                total[n] += seconds
    for n, seconds in total.items():  # one iteration = the four steps above
        rows.append(_row(name, device, n, "Algorithm 1 iteration (sum)", b, b, seconds, iters))
    return rows


def _row(
    preset_name: str,
    device: torch.device,
    threads: int,
    step: str,
    batch: int,
    images: int,
    seconds: float,
    iters: int,
) -> dict:
    row = {
        "preset": preset_name,
        "device": device.type,
        "threads": threads,
        "step": step,
        "batch": batch,
        "images_per_step": images,
        "ms_per_step": round(seconds * 1e3, 2),
        "images_per_s": round(images / seconds, 1),
        "timed_iters": iters,
    }
    print(f"  {preset_name:5s} {device.type}x{threads} {step:28s} {row['images_per_s']:9.1f} img/s")
    return row


def markdown(result: dict) -> str:
    """The result as a Markdown report with one table."""
    env = result["environment"]
    lines = [
        f"# Training throughput, {result['device']} ({SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]})",
        "",
        f"- machine: {env['cpu']}, torch {env['torch']}",
        f"- fp32 matmul (2048^3): **{result['matmul_gflops']:.1f} GFLOP/s** "
        f"({env['matmul_threads']} threads)",
        f"- load average at start / end: {env['load_start']} / {env['load_end']}",
        f"- {result['note']}",
        "",
        "| preset | threads | step | batch | images/step | ms/step | images/s | timed iters |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['preset']} | {r['threads']} | {r['step']} | {r['batch']} | "
            f"{r['images_per_step']} | {r['ms_per_step']} | {r['images_per_s']} | "
            f"{r['timed_iters']} |"
        )
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    from export.sessions import cpu_model

    return f"{cpu_model()} x{os.cpu_count()}"


def main() -> None:
    """Run the benchmark on CPU (and CUDA if present) and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    max_threads = torch.get_num_threads()
    for device in devices:
        load_start = [round(v, 2) for v in os.getloadavg()]
        on_cpu = device.type == "cpu"
        # the paper preset costs ~8 s per iteration on one core: few timed iterations there
        plan = {"small": (2, 3 if args.quick else 8), "paper": (1, 1 if args.quick else 3)}
        thread_counts = sorted({1, max_threads}) if on_cpu else [max_threads]
        if not on_cpu:
            plan = {"small": (5, 20), "paper": (5, 20)}
        print(f"{device}: matmul ...")
        torch.set_num_threads(max_threads)
        gflops = matmul_gflops(device, iters=5 if on_cpu else 50)
        rows = []
        for name, (warmup, iters) in plan.items():
            run = preset(name, SHAPE, CLASSES)
            rows += bench_preset(name, run, device, thread_counts, warmup, iters)
        torch.set_num_threads(max_threads)
        note = (
            "fastest of the timed iterations, thread counts taking turns call by call (other "
            "processes only add time on a shared machine); the iteration row sums the four steps; "
            + ", ".join(f"{k}: {w} warm-up + {i} timed" for k, (w, i) in plan.items())
            + ("; CPU path is fp32" if on_cpu else "; CUDA path uses bf16 autocast")
        )
        result = {
            "benchmark": "train_throughput",
            "device": device.type if on_cpu else torch.cuda.get_device_name(device),
            "image_shape": list(SHAPE),
            "matmul_gflops": round(gflops, 1),
            "note": note,
            "environment": {
                "cpu": _cpu_name(),
                "torch": torch.__version__,
                "matmul_threads": max_threads,
                "python": platform.python_version(),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
            },
            "rows": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"train_throughput_{device.type}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
