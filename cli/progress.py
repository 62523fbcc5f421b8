"""Rich progress bars shared by the commands: one bar per stage, driven by the core's progress
callback (:class:`dgaal_core.progress.Progress`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from . import interrupt

console = Console(stderr=True)


def progress_line(message: str) -> None:
    """One unwrapped line on stderr (what a round or an experiment has to say): a log or a
    pipe gets it whole, a terminal wraps it."""
    console.print(message, soft_wrap=True, highlight=False, markup=False)


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
        from rich.table import Column

        # The stage's name and counts are never cut; on a narrow terminal only the losses at
        # the end shrink (with an ellipsis), where rich would otherwise squeeze every column.
        def whole() -> Column:
            return Column(no_wrap=True)

        rate = _rate_column(unit)
        rate.table_column = whole()
        self._bar = Progress(
            TextColumn("{task.description}", table_column=whole()),
            BarColumn(bar_width=20, table_column=whole()),
            MofNCompleteColumn(table_column=whole()),
            TaskProgressColumn(table_column=whole()),
            rate,
            TimeElapsedColumn(table_column=whole()),
            TimeRemainingColumn(table_column=whole()),
            TextColumn(
                "{task.fields[info]}",
                table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"),
            ),
            console=console,
            disable=not (enabled and console.is_terminal),
            expand=True,
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
