"""What ``dgaal pool check`` reports: one :class:`Finding` per check of :data:`CHECKS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHECKS = (
    "attributes",
    "row fields",
    "shards",
    "orphans",
    "labels",
    "lineage",
    "depth",
    "rounds",
    "pending round",
    "backup",
    "embeddings",
)
SHOWN = 3  # problems named per check; the rest are counted


@dataclass(frozen=True)
class Finding:
    """One row of the check table. ``status``: ``ok``, ``damaged`` or ``skipped`` (could not
    be checked because of damage found earlier). ``repair``: what ``--repair`` would do, or
    why it cannot (``repairable`` says which)."""

    check: str
    status: str
    detail: str
    repair: str = ""
    repairable: bool = False

    @property
    def damaged(self) -> bool:
        return self.status == "damaged"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


def join(problems: list[str]) -> str:
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; and {more} more" if more > 0 else "")
