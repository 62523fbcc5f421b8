"""The ``dgaal`` command line: a thin Typer app that registers one sub-app per command module.

Command modules import their heavy dependencies (numpy, h5py, torch, onnxruntime) inside the
command functions, so ``dgaal --help`` and the pool commands never load torch.
"""

from __future__ import annotations

from typing import Annotated

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
    serve_cmd,
)

app = typer.Typer(
    name="dgaal",
    help="Dual Generative Adversarial Active Learning: pools in HDF5, training in PyTorch, "
    "scoring and generation with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"dgaal {version('dgaal')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("dgaal (not installed: no version)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Dual Generative Adversarial Active Learning: pools in HDF5, training in PyTorch,
    scoring and generation with ONNX Runtime."""


app.add_typer(pool_cmd.app, name="pool")
round_cmd.register(app)
experiment_cmd.register(app)
report_cmd.register(app)
demo_cmd.register(app)
export_cmd.register(app)
score_cmd.register(app)
generate_cmd.register(app)
serve_cmd.register(app)


if __name__ == "__main__":  # python -m cli.main
    app()
