"""The row checks of ``dgaal pool check``: labels, lineage, depth, the round log and the pending
round, over the per-row fields that :mod:`dgaal_core.pool.check` parsed (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.state import PENDING_KEY, PendingRound, Phase, RecordError, RoundRecord
from dgaal_core.pool.schema import Origin, State


def _ids(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:5])
    return shown + (f", ... ({ids.size} in all)" if ids.size > 5 else "")


class RowChecks:
    """Mixin of the checker: what it parsed, and one method per row check."""

    fields: dict[str, np.ndarray] | None
    k: int | None
    test_labels: np.ndarray | None
    rounds: list[dict[str, Any]] | None
    meta: dict[str, Any] | None

    def add(self, check: str, problems: list[str], ok: str, **repair: Any) -> None:
        raise NotImplementedError

    def skip(self, check: str, why: str) -> None:
        raise NotImplementedError

    def labels(self) -> None:
        if self.fields is None or self.k is None:
            return self.skip("labels", "the row fields or classes do not parse")
        f, k, bad = self.fields, self.k, []
        state, label = f["state"], f["label"]
        for name, enum in (("state", State), ("origin", Origin)):
            wrong = np.flatnonzero(~np.isin(f[name], [int(v) for v in enum]))
            if wrong.size:
                bad.append(f"rows {_ids(wrong)} have an unknown {name}")
        lab = state == State.LABELLED
        wrong = np.flatnonzero(lab & ((label < 0) | (label >= k)))
        if wrong.size:
            bad.append(f"labelled rows {_ids(wrong)} have no label in 0..{k - 1}")
        wrong = np.flatnonzero(~lab & ((label < -1) | (label >= k)))
        if wrong.size:
            bad.append(f"rows {_ids(wrong)} have labels outside -1..{k - 1}")
        wrong = np.flatnonzero(lab & (f["round"] < 0))
        if wrong.size:
            bad.append(f"labelled rows {_ids(wrong)} have no round")
        if self.test_labels is not None and self.test_labels.size:
            wrong = np.flatnonzero((self.test_labels < 0) | (self.test_labels >= k))
            if wrong.size:
                bad.append(f"test rows {_ids(wrong)} have labels outside 0..{k - 1}")
        self.add("labels", bad, f"{int(lab.sum())} labelled rows, labels in 0..{k - 1}")

    def _parents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generated rows, their parents, and which of them name an earlier existing row."""
        assert self.fields is not None
        gen = np.flatnonzero(self.fields["origin"] == Origin.GENERATED)
        parent = self.fields["parent"][gen]
        return gen, parent, (parent >= 0) & (parent < gen)

    def lineage(self) -> None:
        if self.fields is None:
            return self.skip("lineage", "the row fields do not parse")
        f, bad = self.fields, []
        gen, parent, valid = self._parents()
        if (~valid).any():
            bad.append(f"generated rows {_ids(gen[~valid])} name no earlier row as parent")
        g, p = gen[valid], parent[valid]
        wrong = g[f["label"][g] != f["label"][p]]
        if wrong.size:
            bad.append(f"generated rows {_ids(wrong)} have another label than their parent")
        real = np.flatnonzero((f["origin"] == Origin.REAL) & (f["parent"] != -1))
        if real.size:
            bad.append(f"real rows {_ids(real)} have a parent")
        self.add("lineage", bad, f"{gen.size} generated rows carry their parent's label")

    def _parsed(self) -> tuple[list[RoundRecord | str], PendingRound | str | None]:
        """The round log and the pending round as typed records, or what does not parse."""
        records: list[RoundRecord | str] = []
        for k, raw in enumerate(self.rounds or [], start=1):
            try:
                records.append(RoundRecord.from_dict(raw, f"round record {k}"))
            except RecordError as e:
                records.append(str(e))
        raw_pending = (self.meta or {}).get(PENDING_KEY)
        try:
            pending = PendingRound.from_dict(raw_pending) if raw_pending else None
        except RecordError as e:
            return records, str(e)
        return records, pending

    def depth_limit(self) -> int:
        records, pending = self._parsed()
        configs = [r.config for r in records if isinstance(r, RoundRecord)]
        if isinstance(pending, PendingRound):
            configs.append(pending.config)
        return max([RoundConfig().depth_limit, *(c.depth_limit for c in configs if c)])

    def depth(self) -> None:
        if self.fields is None:
            return self.skip("depth", "the row fields do not parse")
        f, bad, limit = self.fields, [], self.depth_limit()
        real = np.flatnonzero((f["origin"] == Origin.REAL) & (f["depth"] != 0))
        if real.size:
            bad.append(f"real rows {_ids(real)} have depth != 0")
        gen, parent, valid = self._parents()
        g, p = gen[valid], parent[valid]
        wrong = g[f["depth"][g] != f["depth"][p] + 1]
        if wrong.size:
            bad.append(f"generated rows {_ids(wrong)} have a depth other than their parent's + 1")
        deep = np.flatnonzero(f["depth"] > limit)
        if deep.size:
            bad.append(f"rows {_ids(deep)} are deeper than the depth limit {limit}")
        self.add("depth", bad, f"depths within the limit {limit}")

    # ---- round log -----------------------------------------------------------------------------
    def _selected(self, ids_: tuple[int, ...], where: str, bad: list[str]) -> np.ndarray | None:
        assert self.fields is not None
        ids = np.asarray(ids_, dtype=np.int64)
        n = self.fields["state"].size
        missing = ids[(ids < 0) | (ids >= n)]
        if missing.size:
            bad.append(
                f"{where} selected ids {_ids(missing)} that are not in the pool (0..{n - 1})"
            )
            return None
        return ids

    def round_log(self) -> None:
        if self.fields is None or self.rounds is None:
            return self.skip("rounds", "the row fields or the round log do not parse")
        f, bad, total = self.fields, [], 0
        records, pending = self._parsed()
        for k, rec in enumerate(records, start=1):
            where = f"round record {k}"
            if isinstance(rec, str):
                bad.append(rec)
                continue
            if rec.round != k:
                bad.append(f"{where} is not round {k}")
                continue
            ids = self._selected(rec.selected, where, bad)
            if ids is not None:
                wrong = ids[f["state"][ids] != State.LABELLED]
                if wrong.size:
                    bad.append(f"{where} selected ids {_ids(wrong)} that are not labelled")
                wrong = ids[f["round"][ids] != k]
                if wrong.size:
                    bad.append(f"{where} selected ids {_ids(wrong)} labelled in another round")
                q, free = rec.oracle_queries, rec.free_labels
                if q is not None and free is not None and q + free != ids.size:
                    bad.append(
                        f"{where}: {rec.oracle_queries} queries + {rec.free_labels} free labels, "
                        f"but {ids.size} selected"
                    )
            total += rec.oracle_queries or 0
            if rec.oracle_queries_total is not None and rec.oracle_queries_total != total:
                bad.append(f"{where}: oracle_queries_total {rec.oracle_queries_total}, sum {total}")
            if rec.generated_ids:
                lo, hi = rec.generated_ids
                if hi - lo != (rec.generated_added or 0) or not (
                    0 <= lo <= hi <= f["origin"].size
                    and np.all(f["origin"][lo:hi] == Origin.GENERATED)
                ):
                    bad.append(
                        f"{where}: generated_ids {list(rec.generated_ids)} are not its "
                        "generated rows"
                    )
        extra = pending.generated_added if isinstance(pending, PendingRound) else 0
        added = sum(r.generated_added or 0 for r in records if isinstance(r, RoundRecord))
        gen = int(np.sum(f["origin"] == Origin.GENERATED))
        if gen != added + extra:
            bad.append(f"{gen} generated rows, but the rounds record {added + extra}")
        self.add("rounds", bad, f"{len(self.rounds)} rounds agree with the rows")

    def pending(self) -> None:
        if self.fields is None or self.rounds is None or self.meta is None:
            return self.skip("pending round", "the row fields, round log or meta do not parse")
        state, bad = self.fields["state"], []
        queried = np.flatnonzero(state == State.QUERIED)
        _, p = self._parsed()
        if p is None:
            if queried.size:
                bad.append(f"rows {_ids(queried)} are queried, but no round waits for answers")
            return self.add("pending round", bad, "none")
        n = len(self.rounds) + 1
        if isinstance(p, str):
            return self.add(
                "pending round", [p], "", repair=f"pending round: {p} cannot be abandoned"
            )
        where = f"pending round {p.round} (phase {p.phase.value!r})"
        if p.round != n:
            bad.append(f"{where} should be round {n}")
        ids = self._selected(p.selected, where, bad)
        if ids is not None and p.phase is Phase.AWAITING_LABELS:
            asked = p.asked(self.fields["origin"])
            if not np.isin(asked, ids).all():
                bad.append(f"{where}: queried ids that it did not select")
            else:
                free = np.setdiff1d(ids, asked)
                wrong = free[state[free] != State.LABELLED]
                wrong = np.union1d(
                    wrong, asked[~np.isin(state[asked], [State.QUERIED, State.LABELLED])]
                )
                if wrong.size:
                    bad.append(
                        f"{where}: selected rows {_ids(wrong)} are neither asked nor labelled"
                    )
                stray = np.setdiff1d(queried, asked)
                if stray.size:
                    bad.append(f"rows {_ids(stray)} are queried, but the round did not ask them")
                if not queried.size:
                    bad.append(f"{where} waits for answers, but no row is queried")
        elif ids is not None:
            wrong = ids[state[ids] != State.LABELLED]
            if wrong.size:
                bad.append(f"{where}: selected rows {_ids(wrong)} are not labelled")
            if queried.size:
                bad.append(f"{where}: rows {_ids(queried)} are still queried")
        if p.phase is Phase.AWAITING_LABELS:
            repair = {
                "repair": f"abandon round {n} (its answers are asked again)",
                "repairable": True,
            }
        else:
            repair = {"repair": "its labels are committed: run `dgaal round` to finish it"}
        ok = (
            f"round {n} waits for {queried.size} answers"
            if queried.size
            else f"round {n} at phase {p.phase.value}"
        )
        self.add("pending round", bad, ok, **repair)
