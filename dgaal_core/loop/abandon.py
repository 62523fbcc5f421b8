"""``dgaal round --abandon``: roll back a round that has not committed its labels.

What can be rolled back (see the phases in :mod:`dgaal_core.loop.round`):

- a round that stopped before COMMIT A (a crash or an error while training, exporting or
  scoring): the pool holds nothing of it; only its round folder is put aside;
- a round waiting for a person's answers (phase ``awaiting_labels``): its queried rows go
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

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.loop.state import Phase, pending_round, set_pending
from dgaal_core.loop.workdir import round_dir, work_dir
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
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


@dataclass(frozen=True)
class Abandoned:
    """What ``dgaal round --abandon`` undid."""

    round: int
    phase: Phase | None  # None: the round had written nothing to the pool
    requeued: int = 0  # queried rows that are candidates again
    answers_discarded: int = 0  # answers imported for them, dropped
    free_undone: int = 0  # generated picks (free labels) that are candidates again
    folder: Path | None = None  # where the round's folder was put aside


def abandon_round(
    pool_path: Path, workdir: Path | None = None, *, discard_answers: bool = False
) -> Abandoned:
    """Roll back the pool's unfinished round (see the module docstring). Raises
    :class:`AbandonError` when there is nothing to abandon, the labels are committed, or
    answers a person gave would be discarded without ``discard_answers`` (``--yes``)."""
    pool_path = Path(pool_path)
    workdir = Path(workdir) if workdir is not None else work_dir(pool_path)
    if workdir.exists() and not workdir.is_dir():
        raise AbandonError(f"--workdir {workdir}: exists and is not a folder")
    with PoolWriter(pool_path, purpose="dgaal round --abandon") as w:
        with PoolReader(pool_path) as r:
            n = len(r.rounds()) + 1
            pending = pending_round(r)
            origin = r.fields["origin"]
        rdir = round_dir(workdir, n)
        done = Abandoned(n, None)
        if pending is not None and pending.round == n:
            if pending.phase is not Phase.AWAITING_LABELS:
                raise AbandonError(
                    f"round {n} of {pool_path} has committed its labels (phase "
                    f"'{pending.phase.value}') and cannot be abandoned; run `dgaal round` to "
                    "finish it"
                )
            selected = np.asarray(pending.selected, dtype=np.int64)
            state = w.field("state")
            asked = pending.asked(origin)  # generated picks were free
            free = np.setdiff1d(selected, asked)
            discarded = int(np.sum(state[asked] == State.LABELLED))
            if discarded and not discard_answers:
                raise AbandonError(
                    f"round {n} of {pool_path} holds {discarded} answers imported with "
                    "`dgaal label`; abandoning it discards them: add --yes to abandon it anyway"
                )
            w.set_state(selected, State.UNLABELLED, round_no=-1)
            w.forget_labels(asked)  # a free pick keeps its inherited label, as a candidate
            set_pending(w, None)
            w.commit()
            done = Abandoned(n, pending.phase, int(asked.size), discarded, int(free.size))
        elif not rdir.exists():
            raise AbandonError(
                f"{pool_path} has no unfinished round to abandon "
                f"({n - 1} rounds finished, no {rdir})"
            )
    return dataclasses.replace(done, folder=_aside(rdir))
