"""How far are x_g from x_s, and do they keep their label? Over the loss balance and the noise.

For each pixel-loss weight lambda (Eq. 8) Algorithm 1 of the ``small`` preset is trained once on
a pool with 10% labelled; then x_g = G(x_s) is made for 1,000 training images with noise-head
scales drawn in [1 - s, 1 + s] for each spread s. Reported per (lambda, s): mean |x_g - x_s| (0..1
pixel units; random pairs of images for scale), and label fidelity: the share of x_g whose class a
reference T, trained on every training image's ground truth, agrees with the label x_g inherits
(the reference T's own accuracy on x_s is the ceiling).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation_balance.py --data digits

Evaluated on training images of the validation setup (``datasets.source_for(..., "val")``); no
test image is used. Writes JSON + Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import source_for

from dgaal_core.model.config import preset
from dgaal_core.model.data import ArraySource, to_model_input, to_uint8_images
from dgaal_core.model.networks import build_task_model
from dgaal_core.model.task import train_task
from dgaal_core.model.training import DGAALTrainer
from dgaal_core.values import derive_seed

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def predict(task: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Class predictions of ``task`` for uint8 NHWC ``images``."""
    task.eval()
    return (
        torch.cat([task(to_model_input(images[i : i + 512])) for i in range(0, len(images), 512)])
        .argmax(1)
        .numpy()
    )


@torch.no_grad()
def generate(trainer: DGAALTrainer, images: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """x_g for ``images`` with noise scales drawn in [1 - spread, 1 + spread]."""
    g = trainer.models.g.eval()
    rng = np.random.default_rng(seed)
    scales = torch.as_tensor(
        rng.uniform(1 - spread, 1 + spread, g.noise_channels), dtype=torch.float32
    )
    out = [
        to_uint8_images(g(to_model_input(images[i : i + 512]), scales)).numpy()
        for i in range(0, len(images), 512)
    ]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="digits", choices=("digits", "cifar"))
    ap.add_argument("--weights", default="0.1,0.01,0.001")
    ap.add_argument("--spreads", default="0.05,0.25,0.5")
    ap.add_argument("--gan-steps", type=int, default=None, help="default: the small preset's")
    ap.add_argument("--noise-skips", action="store_true", help="noise on the skips too")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "generation_balance")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgaal-cache")
    args = ap.parse_args()
    src = source_for(args.data, "val", args.cache)
    assert src.y_train is not None
    x, y = src.x_train, src.y_train.astype(np.int64)
    k = len(src.class_names)
    rng = np.random.default_rng(derive_seed(0, "balance"))
    labelled = np.zeros(len(x), dtype=bool)
    labelled[rng.permutation(len(x))[: len(x) // 10]] = True
    probe = np.sort(rng.permutation(len(x))[:1000])
    t0 = time.perf_counter()
    run = preset("small", src.image_shape, k)
    reference = build_task_model(run.model, derive_seed(0, "reference-task"))
    train_task(reference, ArraySource(x, y), run.train, np.random.default_rng(0), device="cpu")
    ceiling = float(np.mean(predict(reference, x[probe]) == y[probe]))
    pairs = rng.permutation(probe)
    random_pairs = float(np.abs(x[probe].astype(np.int16) - x[pairs].astype(np.int16)).mean() / 255)
    rows: list[dict[str, Any]] = []
    for w in (float(v) for v in args.weights.split(",")):
        overrides: dict[str, Any] = {"pmse_weight": w, "device": "cpu"}
        if args.gan_steps is not None:
            overrides["gan_steps"] = args.gan_steps
        run = preset("small", src.image_shape, k, **overrides)
        if args.noise_skips:
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, noise_skips=True))
        trainer = DGAALTrainer.create(run, "cpu")
        trainer.train_gan(ArraySource(x[labelled]), ArraySource(x[~labelled]), real=ArraySource(x))
        for s in (float(v) for v in args.spreads.split(",")):
            x_g = generate(trainer, x[probe], s, derive_seed(0, "balance-noise"))
            dist = float(np.abs(x_g.astype(np.int16) - x[probe].astype(np.int16)).mean() / 255)
            fidelity = float(np.mean(predict(reference, x_g) == y[probe]))
            row = {
                "pmse_weight": w,
                "noise_spread": s,
                "distance": round(dist, 4),
                "label_fidelity": round(fidelity, 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {
        "benchmark": "benchmarks/generation_balance.py",
        "data": args.data,
        "gan_steps": run.train.num_gan_steps(len(x)),
        "reference_accuracy_on_x_s": round(ceiling, 4),
        "random_pair_distance": round(random_pairs, 4),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.data}{'-noise-skips' if args.noise_skips else ''}"
    out["noise_skips"] = args.noise_skips
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1))
    lines = [
        f"# x_g against x_s on {args.data} ({out['gan_steps']} Algorithm-1 steps, small preset, "
        f"noise on the skips: {'yes' if args.noise_skips else 'no'})",
        "",
        f"Reference T on the 1,000 x_s themselves: {100 * ceiling:.1f}% (the fidelity ceiling). "
        f"Mean distance between random pairs of images: {random_pairs:.3f}.",
        "",
        "| lambda (Eq. 8) | noise spread | mean abs x_g - x_s | label fidelity |",
        "|---|---|---|---|",
    ]
    for r in rows:
        fid = 100 * r["label_fidelity"]
        lines.append(
            f"| {r['pmse_weight']} | {r['noise_spread']} | {r['distance']:.4f} | {fid:.1f}% |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
