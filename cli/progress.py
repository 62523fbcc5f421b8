"""Rich progress bars shared by the commands: one bar per stage, driven by the core's progress
callback (:class:`dgaal_core.progress.Progress`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from . import interrupt

console = Console(stderr=True)


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="cyan")

    return RateColumn()


class StageProgress:
    """``progress(stage, done, total, **info)`` callback that draws one rich bar per stage, with
    a rate and the latest ``info`` (a training step's losses).

    Disabled (drawing nothing) when ``enabled`` is false or stderr is not a terminal.
    """

    def __init__(self, enabled: bool = True, unit: str = "img"):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _rate_column(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self._tasks: dict[str, Any] = {}
        self._done: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int, /, **info: float) -> None:
        interrupt.check(stage)  # every progress report is a safe point to stop at
        if stage not in self._tasks or (done <= 1 and self._done.get(stage, 0) > done):
            # a stage that starts over (T for selection, then T) gets a fresh bar
            self._tasks[stage] = self._bar.add_task(stage, total=total, info="")
        self._done[stage] = done
        text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        self._bar.update(self._tasks[stage], completed=done, total=total, info=text)

    def stage(self, name: str) -> Any:
        """A ``(done, total)`` callback bound to one stage name."""
        return lambda done, total: self(name, done, total)

    def __enter__(self) -> StageProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def safe_point(stage: str, done: int, total: int, /, **info: float) -> None:
    """A progress callback that draws nothing and only lets a signal stop the work here."""
    interrupt.check(stage)
