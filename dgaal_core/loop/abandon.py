"""``dgaal round --abandon``: roll back a round that has not committed its labels.

What can be rolled back (see the phases in :mod:`dgaal_core.round`):

- a round that stopped before COMMIT A (a crash or an error while training, exporting or
  scoring): the pool holds nothing of it; only its round folder is put aside;
- a round waiting for a person's answers (``phase = "awaiting_labels"``): its queried rows go
  back among the candidates (answers already imported with ``dgaal label`` are discarded), the
  generated rows it picked for free become candidates again, and the pending record is cleared.

A round whose labels are committed (phase ``selected`` or ``generated``) cannot be abandoned:
its labels may already have trained models and been seen by a person; the next ``dgaal round``
finishes its later phases instead.

The round folder is renamed ``round-000N.abandoned`` (``.abandoned-2``, ... if taken), never
deleted: its checkpoints and query package stay there for inspection. The pool is committed
first, so a crash in between leaves a clean pool and a folder that the next round reuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State, round_dir, work_dir
from dgaal_core.pool.writer import PoolWriter


class AbandonError(DgaalError):
    """There is no round to abandon, or the pending round has committed its labels."""


def _aside(folder: Path) -> Path | None:
    """Rename ``folder`` to ``<name>.abandoned`` (or ``.abandoned-2``, ...); None if absent."""
    if not folder.exists():
        return None
    target = folder.with_name(folder.name + ".abandoned")
    k = 2
    while target.exists():
        target = folder.with_name(f"{folder.name}.abandoned-{k}")
        k += 1
    folder.rename(target)
    return target


def abandon_round(pool_path: Path, workdir: Path | None = None) -> dict[str, Any]:
    """Roll back the pool's unfinished round (see the module docstring).

    Returns ``{"round", "phase", "requeued", "answers_discarded", "free_undone", "folder"}``;
    ``phase`` is ``None`` when the round had written nothing to the pool. Raises
    :class:`AbandonError` when there is nothing to abandon or the labels are committed.
    """
    pool_path = Path(pool_path)
    workdir = Path(workdir) if workdir is not None else work_dir(pool_path)
    if workdir.exists() and not workdir.is_dir():
        raise AbandonError(f"--workdir {workdir}: exists and is not a folder")
    with PoolWriter(pool_path, purpose="dgaal round --abandon") as w:
        with PoolReader(pool_path) as r:
            n = len(r.rounds()) + 1
            pending = r.meta.get("pending_round")
            origin = r.fields["origin"]
        rdir = round_dir(workdir, n)
        out: dict[str, Any] = {"round": n, "phase": None, "requeued": 0}
        out |= {"answers_discarded": 0, "free_undone": 0}
        if pending and int(pending["round"]) == n:
            phase = str(pending["phase"])
            if phase != "awaiting_labels":
                raise AbandonError(
                    f"round {n} of {pool_path} has committed its labels (phase '{phase}') and "
                    "cannot be abandoned; run `dgaal round` to finish it"
                )
            selected = np.asarray(pending["selected"], dtype=np.int64)
            state = w.field("state")
            if "queried" in pending:
                asked = np.asarray(pending["queried"], dtype=np.int64)
            else:  # recorded before "queried" was: real picks were asked, generated ones free
                asked = selected[origin[selected] == Origin.REAL]
            free = np.setdiff1d(selected, asked)
            out["answers_discarded"] = int(np.sum(state[asked] == State.LABELLED))
            w.set_state(selected, State.UNLABELLED, round_no=-1)
            w.forget_labels(asked)  # a free pick keeps its inherited label, as a candidate
            w.update_meta(pending_round=None)
            w.commit()
            out |= {"phase": phase, "requeued": int(asked.size), "free_undone": int(free.size)}
        elif not rdir.exists():
            raise AbandonError(
                f"{pool_path} has no unfinished round to abandon "
                f"({n - 1} rounds finished, no {rdir})"
            )
    out["folder"] = None if (moved := _aside(rdir)) is None else str(moved)
    return out
