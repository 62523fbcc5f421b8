"""Scoring and generation throughput: PyTorch eager vs onnxruntime fp32 vs int8, side by side.

    .venv/bin/python -m benchmarks.onnx_throughput   # -> benchmarks/results/onnx_throughput.*

One run measures, for each preset (32x32x3 images) and batch size, in interleaved rounds:
PyTorch eager (``inference_mode``, NCHW and channels_last, the better one is "eager"), onnxruntime
fp32, the int8 sampler alone and int8 with fp32 rescoring of its lowest scores
(``export.cascade``), all on the same thread count. Numbers are images/s (best round), the ratio
to eager, and the share of the CPU's fp32 peak reached by the model's MACs (counted by forward
hooks); the peak is a 2048x2048 matmul run among the variants, i.e. under the same load (the
machine is shared). The graphs include the pixel transforms (uint8 in), so both sides do the same
work. The models are briefly trained first (``onnx_common.briefly_trained``) so the int8
selection agreement means something.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.onnx_common import (
    SHAPE,
    briefly_trained,
    count_macs,
    digits_rgb,
    interleaved_best,
    machine,
    matmul_peak_gflops,
    matmul_probe,
    md_table,
    write_results,
)
from dgaal_core.model.data import to_uint8_images
from export.onnx_export import GeneratorGraph, SamplerGraph, fresh_d1, fresh_generator
from export.pipeline import export_round
from export.quantize import quantize_sampler_int8
from export.runtime import GeneratorSession, SamplerSession

VARIANTS = {
    "torch_nchw": "torch NCHW",
    "torch_channels_last": "torch channels_last",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
    "ort_int8_cascade": "ORT int8 + fp32 rescoring",
}


class ChannelsLastSampler(nn.Module):
    """The sampler graph with channels_last activations (same maths as SamplerGraph)."""

    def __init__(self, graph: SamplerGraph) -> None:
        super().__init__()
        self.g, self.d1 = graph.g, graph.d1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # NHWC memory = channels_last
        z = self.g.encode(x.contiguous(memory_format=torch.channels_last))
        return self.d1(z), z


class ChannelsLastGenerator(nn.Module):
    """The generator graph with channels_last activations."""

    def __init__(self, graph: GeneratorGraph) -> None:
        super().__init__()
        self.g = graph.g

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return to_uint8_images(self.g(x.contiguous(memory_format=torch.channels_last), noise))


def _eager(module: nn.Module, *extra: torch.Tensor) -> Any:
    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x), *extra)

    return run


def bench_preset(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """All measurements of one preset."""
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    models = briefly_trained(name, args.gan_steps, args.coevolve_steps, cache=cache)
    train_s = time.perf_counter() - t0
    images = digits_rgb(max(args.batches) + 4096 + 512, seed=1)
    parity, calib, agree = images[:256], images[256:512], images[512 : 512 + 4096]
    bench = images[512 + 4096 :]
    report = export_round(models, tmp / name, parity)
    q = quantize_sampler_int8(
        report.sampler, tmp / name / "int8.onnx", calib, agree, min_agreement=0.0
    )
    mode = "direct" if q.agreement >= 0.99 else "refused"
    if mode == "refused" and q.cascade_agreement >= 0.99:
        mode = "cascade"
    int8 = {
        "agreement": q.agreement,
        "cascade_agreement": q.cascade_agreement,
        "rescore_fraction": q.rescore_fraction,
        "selected": q.selected,
        "images": q.images,
        "mode_at_99": mode,
    }

    g, d1 = fresh_generator(models.g, models.config), fresh_d1(models.d1, models.config)
    sg, gg = SamplerGraph(g, d1).eval(), GeneratorGraph(g).eval()
    noise_t = g.sample_noise_scales(torch.Generator().manual_seed(0))
    one = torch.from_numpy(bench[:1])
    macs = {"score": count_macs(sg, one), "generate": count_macs(gg, one, noise_t)}
    g_cl = fresh_generator(models.g, models.config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    sg_cl = ChannelsLastSampler(SamplerGraph(g_cl, d1)).eval()
    gg_cl = ChannelsLastGenerator(GeneratorGraph(g_cl)).eval()

    threads = args.threads
    s32 = SamplerSession(report.sampler, "cpu", threads)
    s8 = SamplerSession(q.path or "", "cpu", threads, rescore=False)
    cascade = SamplerSession(
        q.path or "", "cpu", threads, rescore=True, rescore_fraction=q.rescore_fraction
    )
    probe, probe_flops = matmul_probe()
    gen = GeneratorSession(report.generator, "cpu", threads)
    noise = noise_t.numpy()
    out: dict[str, Any] = {
        "source": models.source,
        "train_seconds": train_s,
        "macs": macs,
        "int8": int8,
        "score": [],
        "generate": [],
    }
    tasks = {
        "score": {
            "torch_nchw": _eager(sg),
            "torch_channels_last": _eager(sg_cl),
            "ort_fp32": lambda x: s32.score(x, len(x)),
            "ort_int8": lambda x: s8.score(x, len(x)),
            "ort_int8_cascade": lambda x: cascade.score(x, len(x)),
        },
        "generate": {
            "torch_nchw": _eager(gg, noise_t),
            "torch_channels_last": _eager(gg_cl, noise_t),
            "ort_fp32": lambda x: gen.generate(x, noise, len(x)),
        },
    }
    for task, variants in tasks.items():
        batches = args.batches if task == "score" or name != "paper" else args.paper_gen_batches
        for bs in batches:
            x = bench[:bs]
            fns = {k: (lambda f=f, x=x: f(x)) for k, f in variants.items()}
            best = interleaved_best({**fns, "peak": probe}, args.repeats, args.min_seconds)
            peak = probe_flops / best.pop("peak") / 1e9  # GFLOP/s under the same load
            ips = {k: bs / v for k, v in best.items()}
            eager = max(ips["torch_nchw"], ips["torch_channels_last"])
            for k, v in ips.items():
                gflops = 2 * macs[task] * v / 1e9
                out[task].append(
                    {
                        "batch": bs,
                        "variant": k,
                        "images_per_s": v,
                        "ratio_to_eager": v / eager,
                        "share_of_peak": gflops / peak,
                        "peak_gflops": peak,
                    }
                )
            print(f"{name} {task} bs={bs}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in ips.items()))
    return out


def bench_exporters(tmp: Path, threads: int) -> dict[str, Any]:
    """Export time and onnxruntime speed: TorchScript vs dynamo exporter (paper sampler)."""
    from dgaal_core.model.config import preset
    from dgaal_core.model.networks import LatentDiscriminator, UNetGenerator
    from export.onnx_export import export_sampler

    config = preset("paper", SHAPE, 10).model
    g, d1 = UNetGenerator(config), LatentDiscriminator(config.latent_dim, config.d1_hidden)
    x = digits_rgb(512, seed=2)
    res: dict[str, Any] = {}
    sessions = {}
    for dynamo in (False, True):
        key = "dynamo" if dynamo else "torchscript"
        path = tmp / f"{key}.onnx"
        t = time.perf_counter()
        export_sampler(g, d1, config, path, x[:64], dynamo=dynamo)
        res[key] = {"export_seconds": time.perf_counter() - t}
        sessions[key] = SamplerSession(path, "cpu", threads)
    fns: dict[str, Callable[[], Any]] = {k: partial(s.score, x, 256) for k, s in sessions.items()}
    best = interleaved_best(fns, 3, 2.0)
    for k, v in best.items():
        res[k]["ort_images_per_s"] = 512 / v
    return res


def apply_peak(data: dict[str, Any]) -> float:
    """Set every cell's share of peak against the best matmul seen anywhere in the run."""
    probes = [data["peak_gflops"], data.get("peak_gflops_end", 0.0)]
    for p in data["presets"].values():
        probes += [r["peak_gflops"] for task in ("score", "generate") for r in p[task]]
    peak = max(probes)
    for p in data["presets"].values():
        for task in ("score", "generate"):
            for r in p[task]:
                r["share_of_peak"] = 2 * p["macs"][task] * r["images_per_s"] / 1e9 / peak
    data["peak_gflops_best"] = peak
    return peak


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    peak = apply_peak(data)
    lines = [
        "# ONNX throughput (scoring and generation), 32x32x3",
        "",
        f"CPU: {data['machine']['cpu']}, {data['threads']} threads for every variant; torch "
        f"{data['machine']['torch']}, onnxruntime {data['machine']['onnxruntime']}. Each cell: "
        "best of interleaved rounds (variants in turn) on a machine shared with other jobs: "
        "compare ratios within a row, not absolute numbers across rows. eager = better of NCHW "
        f"and channels_last. Share of peak: model FLOPs (2 x MACs) per second over {peak:.0f} "
        "GFLOP/s, the best fp32 matmul (2048^2, run among the variants of every cell, and "
        "4096^2 at start and end) seen in the run; the machine's other jobs depress that probe "
        "as much as the models, so shares are rough, and int8 cells can pass 100% (int8 "
        "arithmetic is not bounded by the fp32 peak). "
        "ORT int8 + fp32 rescoring = int8 on the batch, then fp32 on its lowest "
        "rescore-fraction (export.cascade).",
        "",
    ]
    for name, p in data["presets"].items():
        i8 = p["int8"]
        lines += [
            f"## preset `{name}`",
            "",
            f"Models: {p['source']}. MACs per image: scoring {p['macs']['score'] / 1e6:.1f} M, "
            f"generation {p['macs']['generate'] / 1e6:.1f} M. "
            f"int8 sampler: lowest-{i8['selected']} of {i8['images']} selection agrees with fp32 "
            f"on {i8['agreement']:.1%} alone, on {i8['cascade_agreement']:.1%} with fp32 "
            f"rescoring of the lowest {i8['rescore_fraction']:.0%}; the export's decision at "
            f"the 99% bar: **{i8['mode_at_99']}**.",
            "",
        ]
        for task in ("score", "generate"):
            rows = []
            for bs in sorted({r["batch"] for r in p[task]}):
                by = {r["variant"]: r for r in p[task] if r["batch"] == bs}
                row: list[Any] = [bs]
                for v in VARIANTS:
                    if v in by:
                        r = by[v]
                        row.append(
                            f"{r['images_per_s']:,.0f} ({r['ratio_to_eager']:.2f}x, "
                            f"{r['share_of_peak']:.0%})"
                        )
                    else:
                        row.append("-")
                rows.append(row)
            lines += [f"### {task}: images/s (ratio to eager, share of the fp32 matmul peak)", ""]
            header = ["batch", *VARIANTS.values()]
            lines += [md_table(header, rows)]
    if data.get("exporters"):
        e = data["exporters"]
        rows = [
            [k, f"{v['export_seconds']:.2f}", f"{v['ort_images_per_s']:,.0f}"] for k, v in e.items()
        ]
        lines += ["## exporters (paper sampler, batch 256)", ""]
        lines += [md_table(["exporter", "export s", "ORT images/s"], rows)]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, write benchmarks/results/onnx_throughput.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="small,paper")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--paper-gen-batches", default="64,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--gan-steps", type=int, default=20)
    ap.add_argument("--cache", default="/tmp/dgaal-bench-cache", help="trained weights kept here")
    ap.add_argument("--coevolve-steps", type=int, default=150)
    ap.add_argument("--no-exporters", action="store_true")
    ap.add_argument("--stem", default="onnx_throughput")
    ap.add_argument("--render", help="only re-render the Markdown of this results JSON")
    args = ap.parse_args()
    if args.render:
        rendered = json.loads(Path(args.render).read_text(encoding="utf-8"))
        write_results(Path(args.render).stem, rendered, markdown(rendered))
        return
    args.batches = [int(b) for b in args.batches.split(",")]
    args.paper_gen_batches = [int(b) for b in args.paper_gen_batches.split(",")]
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.threads)
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s on {args.threads} threads")
    data: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "peak_gflops": peak,
        "presets": {},
        "args": {k: v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="dgaal-bench-") as tmp:
        for name in args.presets.split(","):
            data["presets"][name] = bench_preset(name, args, Path(tmp))
        if not args.no_exporters:
            data["exporters"] = bench_exporters(Path(tmp), args.threads)
    data["peak_gflops_end"] = matmul_peak_gflops(args.threads)
    j, m = write_results(args.stem, data, markdown(data))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
