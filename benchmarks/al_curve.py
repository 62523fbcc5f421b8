"""Learning curves of the active-learning protocol on the built-in digits, on this machine.

Every strategy (DGAAL, VAAL, VAAL + co-evolution, random by default) x 3 seeds on copies of one
digits pool (1438 training images, 359 test images): initial 10% labelled, +5% per round up to
40% (the paper's section 4.2 schedule), the ``small`` preset. Writes into ``--out``:

    results.json   every run's curve, plus a ``benchmark`` block (schedule, wall time, machine)
    summary.md     accuracy (mean ± sd) and oracle queries per strategy and labelled ratio
    *.png          accuracy vs labelled ratio, oracle queries vs ratio, accuracy vs queries,
                   and one DGAAL round's selection (generated images framed in red)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/al_curve.py [--seeds 0,1,2] [--gan-steps 300]
    .venv/bin/python benchmarks/al_curve.py --measure    # time one DGAAL run, then stop

Resumable: the runs live in ``--work`` (default: a folder in the temp dir); run it again to
continue after a kill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from datasets import make_pool, source_for

from dgaal_core.experiment.config import ExperimentConfig, Schedule, parse_list
from dgaal_core.experiment.curves import aggregate
from dgaal_core.experiment.report import headline, verdict, write_report
from dgaal_core.experiment.runner import Experiment
from dgaal_core.loop.config import RoundConfig
from export.embed import embed_pool, round_embedder
from export.round_backend import onnx_exporter

HERE = Path(__file__).resolve().parent


def noise_floor(pool: Path, round_config: RoundConfig, seeds: int = 5) -> dict:
    """Test accuracy of T trained ``seeds`` times (only the training seed varies) on one fixed
    labelled set: the noise every point of the curves carries."""
    import numpy as np

    from dgaal_core.loop.sources import PoolSource
    from dgaal_core.model.data import ArraySource
    from dgaal_core.model.networks import build_task_model
    from dgaal_core.model.task import evaluate_task, train_task
    from dgaal_core.pool.reader import PoolReader
    from dgaal_core.pool.schema import State
    from dgaal_core.values import derive_seed

    accs = []
    with PoolReader(pool) as r:
        ids = r.ids(State.LABELLED)
        test_x, test_y = r.read_test()
        for s in range(seeds):
            run = dataclasses.replace(round_config, seed=s).run_config(r.image_shape, r.num_classes)
            task = build_task_model(run.model, derive_seed(s, "noise-floor"))
            rng = np.random.default_rng(derive_seed(s, "noise-floor", "rng"))
            train_task(task, PoolSource(r, ids, r.labels[ids]), run.train, rng)
            test = ArraySource(test_x, test_y.astype(np.int64))
            accs.append(evaluate_task(task, test, r.num_classes, device=run.train.device).accuracy)
    return {
        "pool": str(pool.name),
        "labelled": int(ids.size),
        "accuracies": [round(a, 4) for a in accs],
        "mean": float(np.mean(accs)),
        "sd": float(np.std(accs, ddof=1)),
    }


def _floor_text(floor: dict | None, seeds: int) -> str:
    if not floor:
        return ""
    accs = ", ".join(f"{100 * a:.1f}" for a in floor["accuracies"])
    return (
        f"\nNoise floor: T trained {len(floor['accuracies'])} times on one fixed labelled set "
        f"({floor['labelled']} images, the last round of random seed 0), only the training seed "
        f"varying: {100 * floor['mean']:.1f} ± {100 * floor['sd']:.1f}% ({accs}). A gap between "
        f"two strategies' means is resolved only well above this sd / sqrt({seeds} seeds); the "
        "seed-by-seed table above compares runs that share their initial set.\n"
    )


def train_encoder(pool: Path, steps: int) -> dict:
    """``dgaal pool embed --train --steps STEPS`` on ``pool`` unless its embeddings already come
    from that training (both cores for the training: the runs after it use one)."""
    import torch

    from dgaal_core.model.ssl import SSLConfig
    from dgaal_core.pool.embeddings import read_manifest
    from export.ssl_encoder import train_and_embed

    manifest = read_manifest(pool)
    name = "" if manifest is None else str(manifest.encoder.get("name"))
    seconds = None
    if not name.startswith(f"dgaal-simclr-w32 ({steps} steps on {pool.name}, seed 0)"):
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        try:
            manifest, _, _ = train_and_embed(pool, SSLConfig(steps=steps), provider="cpu")
        finally:
            torch.set_num_threads(threads)
        seconds = round(time.perf_counter() - t0, 1)
        print(f"trained and embedded {pool} in {seconds} s", flush=True)
    assert manifest is not None
    return {"name": manifest.encoder.get("name"), "sha256": manifest.encoder["sha256"],
            "dim": manifest.dim, "train_and_embed_seconds": seconds}  # fmt: skip


def embed_source(pool: Path, encoder: str, cache: Path, ssl_steps: int = 1500) -> dict | None:
    """Embed ``pool`` with ``encoder`` unless it already is (the run pools copy the source's
    embeddings); returns what the results record about it."""
    if encoder == "none":
        return None
    if encoder == "pool":
        return train_encoder(pool, ssl_steps)
    from encoders import mobilenetv2_onnx

    from dgaal_core.pool.embeddings import read_manifest
    from dgaal_core.pool.shards import file_sha256

    model = mobilenetv2_onnx(cache / "encoders")
    sha = file_sha256(model)
    manifest = read_manifest(pool)
    seconds = None
    if manifest is None or manifest.encoder["sha256"] != sha:
        t0 = time.perf_counter()
        manifest, _ = embed_pool(pool, model, provider="cpu")
        seconds = round(time.perf_counter() - t0, 1)
        print(f"embedded {pool} with {model.name} in {seconds} s", flush=True)
    return {"name": manifest.encoder.get("name"), "sha256": sha, "dim": manifest.dim,
            "embed_seconds": seconds}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "al_curve")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dgaal-al-curve")
    ap.add_argument("--data", default="digits", choices=("digits", "cifar", "cifar-full"))
    ap.add_argument("--split", default="test", choices=("test", "val"), help="val: for tuning")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgaal-cache")
    ap.add_argument("--strategies", default="dgaal,dgaal-paper,vaal,random,entropy")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--initial", type=float, default=0.1)
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("--until", type=float, default=0.4)
    ap.add_argument("--gan-steps", type=int, default=None, help="default: the small preset's")
    ap.add_argument("--task-epochs", type=int, default=None)
    ap.add_argument("--coevolve-steps", type=int, default=None)
    ap.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a RoundConfig setting for every run, e.g. shortlist=4 (repeatable)",
    )
    ap.add_argument(
        "--encoder",
        default="none",
        choices=("none", "mobilenetv2", "pool"),
        help="embed the pool first (mobilenetv2: the ImageNet MobileNetV2 of encoders.py; "
        "pool: SimCLR trained on the pool, `dgaal pool embed --train`); "
        "with --setting task_model='\"linear\"' T is a head on these embeddings",
    )
    ap.add_argument("--ssl-steps", type=int, default=1500, help="--encoder pool: SimCLR steps")
    ap.add_argument("--measure", action="store_true", help="time one DGAAL run and stop")
    ap.add_argument(
        "--no-floor", action="store_true", help="skip T's noise floor (see task_noise.py instead)"
    )
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    source = make_pool(
        args.work / f"{args.data}-{args.split}.h5", source_for(args.data, args.split, args.cache)
    )
    embedded = embed_source(source, args.encoder, args.cache, args.ssl_steps)
    settings = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.setting)}
    config = ExperimentConfig(
        strategies=("dgaal",) if args.measure else parse_list(args.strategies),
        seeds=(0,) if args.measure else parse_list(args.seeds, int),
        schedule=Schedule(args.initial, args.step, args.until),
        round=RoundConfig(
            preset="small",
            device="cpu",
            gan_steps=args.gan_steps,
            task_epochs=args.task_epochs,
            coevolve_steps=args.coevolve_steps,
            **settings,
        ),
    )
    work = args.work / ("measure" if args.measure else "experiment")
    exp = Experiment(
        source, work, config, onnx_exporter(provider="cpu"), log=print,
        embedder=round_embedder("cpu"),
    )  # fmt: skip
    print(f"schedule: labelled counts {exp.targets} of {exp.real}; {config.to_dict()}", flush=True)
    wall_file = work / "wall_seconds.json"  # summed over invocations (kills and resumes)
    before = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else 0.0
    t0 = time.perf_counter()
    results = exp.run()
    wall = before + time.perf_counter() - t0
    wall_file.write_text(json.dumps({"seconds": round(wall, 1)}))
    print(f"wall time {wall:.0f} s (all invocations)")
    if args.measure:
        return

    import torch

    benchmark = {
        "script": "benchmarks/al_curve.py",
        "wall_seconds": round(wall, 1),
        "round_seconds_total": round(
            sum(row.seconds for run in results.runs for row in run.rows), 1
        ),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "encoder": embedded,
    }
    if "random" in config.strategies and not args.no_floor and config.round.task_model == "cnn":
        floor = noise_floor(exp.pool_path("random", config.seeds[0]), config.round)
        benchmark["task_noise_floor"] = floor
    source_text = {
        "digits": "built-in digits (scikit-learn)",
        "cifar": "CIFAR-10 subset (10,000 training JPEGs, 1,000 per class)",
        "cifar-full": "CIFAR-10 (all 50,000 training JPEGs)",
    }[args.data] + (
        "; evaluated on a validation split of the training images"
        if args.split == "val"
        else "; evaluated on the test split"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    runs = tuple(  # the pools stay in the work folder
        dataclasses.replace(run, pool=str(Path("work") / run.pool)) for run in results.runs
    )
    results = dataclasses.replace(results, source=source_text, runs=runs)
    data = {**results.to_dict(), "benchmark": benchmark}
    (args.out / "results.json").write_text(json.dumps(data, indent=1))
    sheet = exp.pool_path("dgaal", config.seeds[0]) if "dgaal" in config.strategies else None
    files = write_report(results, args.out, pool=sheet if sheet and sheet.exists() else None)
    agg = aggregate(results)
    summary = args.out / "summary.md"
    b = benchmark
    summary.write_text(
        summary.read_text()
        + "\n## Run\n\n"
        + f"`{b['script']}` on {b['machine']}, {b['cpu_count']} CPU cores, torch {b['torch']} "
        + f"with {b['torch_threads']} thread(s): {b['wall_seconds'] / 60:.1f} min wall time, "
        + f"{b['round_seconds_total']:.0f} s inside the rounds.\n\n"
        + (
            headline(agg) + "\n\n" + verdict(results) + "\n"
            if "random" in agg and "dgaal" in agg
            else ""
        )
        + _floor_text(b.get("task_noise_floor"), len(config.seeds))
    )
    for f in files:
        print(f"wrote {f}")


if __name__ == "__main__":
    main()
