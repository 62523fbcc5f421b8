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
from pathlib import Path

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
