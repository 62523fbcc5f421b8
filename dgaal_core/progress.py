"""Progress reporting as a callback: the core reports, the command line draws (rich lives only
in ``cli/``). A long stage calls ``progress(stage, done, total, **info)`` after each unit of work;
``info`` carries numbers worth showing beside the bar (the latest losses of a training step)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(stage, done, total, **info)``: ``done`` of ``total`` units of ``stage``."""

    def __call__(self, stage: str, done: int, total: int, /, **info: float) -> None: ...


def silent(stage: str, done: int, total: int, /, **info: float) -> None:
    """A :class:`Progress` that reports nothing."""
