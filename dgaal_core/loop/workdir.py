"""The work folder beside a pool: one folder per round with its checkpoints, ONNX files and
query package (pure paths, no I/O but :func:`latest_round`).

::

    pools.dgaal/                    work_dir("pools.h5"), or the round's --workdir
    pools.dgaal/round-0003/         round_dir(workdir, 3)
        trained.pt                  after Algorithm 1 (TRAINED_FILE)
        checkpoint.pt               after co-evolution, with T (CHECKPOINT_FILE)
        sampler.onnx, generator.onnx
        queries/                    the human oracle's query package (QUERIES_DIR)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from dgaal_core.errors import DgaalError

CHECKPOINT_FILE = "checkpoint.pt"  # a round's final checkpoint: G, D1, D2 after Eq. 9, and T
TRAINED_FILE = "trained.pt"  # a round's checkpoint right after Algorithm 1
QUERIES_DIR = "queries"  # the query package of a round waiting for a person


def work_dir(pool_path: str | Path) -> Path:
    """Default work folder of a pool: ``pools.h5`` -> ``pools.dgaal/``."""
    p = Path(pool_path)
    return p.with_name(p.stem + ".dgaal")


def round_dir(workdir: str | Path, n: int) -> Path:
    """Folder of round ``n`` inside a work folder: ``round-0003/``."""
    return Path(workdir) / f"round-{int(n):04d}"


def latest_round(workdir: str | Path) -> int | None:
    """The highest round number with a final checkpoint in ``workdir``, or None."""
    found = []
    folder = Path(workdir)
    if folder.is_dir():
        for p in folder.iterdir():
            m = re.fullmatch(r"round-(\d+)", p.name)
            if m and (p / CHECKPOINT_FILE).is_file():
                found.append(int(m.group(1)))
    return max(found) if found else None


class WorkdirError(DgaalError):
    """The round's work folder is not the one the pool's rounds ran in."""


def previous_checkpoint(
    workdir: Path, n: int, recorded: Path | None, log: Callable[[str], None]
) -> Path:
    """Round ``n - 1``'s final checkpoint in ``workdir``. When it is missing there but the folder
    the pool's rounds ran in (``recorded``) has it, :class:`WorkdirError` names that folder;
    when it is missing everywhere, ``log`` says that what it held is trained again."""
    path = round_dir(workdir, n - 1) / CHECKPOINT_FILE
    if n <= 1 or path.exists():
        return path
    if recorded is not None and Path(workdir).resolve() != recorded:
        if (round_dir(recorded, n - 1) / CHECKPOINT_FILE).exists():
            raise WorkdirError(
                f"round {n - 1} of this pool ran in {recorded}, not in {workdir}: give "
                f"--workdir {recorded} (or move that folder to {workdir})"
            )
    log(
        f"round {n - 1}'s checkpoint is not in {workdir} (nor where the pool's rounds ran): its "
        "co-evolved D1 and its T are gone, so they are trained again from scratch"
    )
    return path
