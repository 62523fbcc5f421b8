"""Ctrl-C (SIGINT) and SIGTERM end a command with one line and exit 130 / 143, after the normal
clean-up ran: a writer's lock and its note are released, staged shards discarded, and the pool
holds its last commit (each commit is atomic, so nothing is half-written).

Where torch or onnxruntime run, an exception raised inside their C++ code can abort the process
(``terminate called after throwing an instance of 'pybind11::error_already_set'``). So during the
long work of ``round``, ``experiment``, ``demo`` and ``pool create`` (:func:`deferred`) a signal
only sets a flag, and the command stops at its next safe point: every progress report
(:func:`check`, called by :class:`cli.progress.StageProgress`), at most one training step or
scoring batch later. A second signal stops it at once. Elsewhere a signal stops it at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """A signal asked the command to stop (a BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int, where: str = "") -> None:
        super().__init__(signum)
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)

    @property
    def message(self) -> str:
        name = NAMES.get(signal.Signals(self.signum), f"signal {self.signum}")
        during = f" during '{self.where}'" if self.where else ""
        return (
            f"interrupted by {name}{during}; everything committed before it is kept, nothing is "
            "half-written: run the command again to go on"
        )


_state = {"defer": False, "pending": None}


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum  # stop at the next safe point
        return
    raise Interrupted(signum)


def check(where: str = "") -> None:
    """A safe point (``where``: the stage it is in): raise :class:`Interrupted` if a signal
    arrived."""
    pending = _state["pending"]
    if pending is not None:
        _state["pending"] = None
        raise Interrupted(int(pending), where)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (main thread only;
    the previous handlers come back afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s in EXIT_CODES:
        signal.signal(s, _handler)
    try:
        yield
        check()  # a signal deferred past the last safe point still stops with its line
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        _state.update(defer=False, pending=None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside :func:`handled`: a first signal waits for the next :func:`check`."""
    was = _state["defer"]
    _state["defer"] = True
    try:
        yield
    finally:
        _state["defer"] = was
    check()
