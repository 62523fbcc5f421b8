"""Experiments (every strategy x seed, round after round) and their reports.

``config``, ``results`` and ``report`` are torch-free (``dgaal report`` runs on the base install
plus the ``report`` extra); :class:`Experiment` (``runner``) needs torch and is loaded on first use:
``from dgaal_core.experiment import Experiment`` works as before.
"""

from typing import Any

__all__ = ["Experiment"]


def __getattr__(name: str) -> Any:
    if name == "Experiment":
        from dgaal_core.experiment.runner import Experiment

        return Experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
