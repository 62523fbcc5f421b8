"""The ``dgaal`` command line: a thin Typer app that registers one sub-app per command module.

Command modules import their heavy dependencies (numpy, h5py, torch, onnxruntime) inside the
command functions, so ``dgaal --help`` and the pool commands never load torch.
"""

from __future__ import annotations

import typer

from . import (
    demo_cmd,
    experiment_cmd,
    export_cmd,
    generate_cmd,
    pool_cmd,
    report_cmd,
    round_cmd,
    score_cmd,
)

app = typer.Typer(
    name="dgaal",
    help="Dual Generative Adversarial Active Learning: pools in HDF5, training in PyTorch, "
    "scoring and generation with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(pool_cmd.app, name="pool")
round_cmd.register(app)
experiment_cmd.register(app)
report_cmd.register(app)
demo_cmd.register(app)
export_cmd.register(app)
score_cmd.register(app)
generate_cmd.register(app)


if __name__ == "__main__":  # python -m cli.main
    app()
