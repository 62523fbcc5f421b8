"""The row checks of ``dgaal pool check``: labels, lineage, depth, the round log and the pending
round, over the per-row fields that :mod:`dgaal_core.pool_check` parsed (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dgaal_core.loop.config import RoundConfig
from dgaal_core.pool.schema import Origin, State

PHASES = ("awaiting_labels", "selected", "generated")  # of meta.pending_round, see round.py


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

    def depth_limit(self) -> int:
        configs = [r.get("config") for r in self.rounds or [] if isinstance(r, dict)]
        pending = (self.meta or {}).get("pending_round")
        if isinstance(pending, dict):
            configs.append(pending.get("config"))
        limits = [
            int(c["depth_limit"]) for c in configs if isinstance(c, dict) and "depth_limit" in c
        ]
        return max([RoundConfig().depth_limit, *limits])

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
    def _selected(self, rec: dict[str, Any], where: str, bad: list[str]) -> np.ndarray | None:
        assert self.fields is not None
        try:
            ids = np.asarray(rec.get("selected", []), dtype=np.int64).ravel()
        except (ValueError, TypeError):
            bad.append(f"{where}: 'selected' is not a list of ids")
            return None
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
        for k, rec in enumerate(self.rounds, start=1):
            where = f"round record {k}"
            if not isinstance(rec, dict) or rec.get("round") != k:
                bad.append(f"{where} is not round {k}")
                continue
            ids = self._selected(rec, where, bad)
            if ids is not None:
                wrong = ids[f["state"][ids] != State.LABELLED]
                if wrong.size:
                    bad.append(f"{where} selected ids {_ids(wrong)} that are not labelled")
                wrong = ids[f["round"][ids] != k]
                if wrong.size:
                    bad.append(f"{where} selected ids {_ids(wrong)} labelled in another round")
                counts = [rec.get("oracle_queries"), rec.get("free_labels")]
                if all(isinstance(c, int) for c in counts) and sum(counts) != ids.size:  # type: ignore[arg-type]
                    bad.append(
                        f"{where}: {counts[0]} queries + {counts[1]} free labels, "
                        f"but {ids.size} selected"
                    )
            total += int(rec.get("oracle_queries", 0) or 0)
            if "oracle_queries_total" in rec and rec["oracle_queries_total"] != total:
                bad.append(
                    f"{where}: oracle_queries_total {rec['oracle_queries_total']}, sum {total}"
                )
            span = rec.get("generated_ids")
            if span:
                lo, hi = (int(v) for v in span)
                if hi - lo != int(rec.get("generated_added", 0)) or not (
                    0 <= lo <= hi <= f["origin"].size
                    and np.all(f["origin"][lo:hi] == Origin.GENERATED)
                ):
                    bad.append(f"{where}: generated_ids {span} are not its generated rows")
        pending = (self.meta or {}).get("pending_round")
        extra = int(pending.get("generated_added", 0)) if isinstance(pending, dict) else 0
        added = sum(int(r.get("generated_added", 0)) for r in self.rounds if isinstance(r, dict))
        gen = int(np.sum(f["origin"] == Origin.GENERATED))
        if gen != added + extra:
            bad.append(f"{gen} generated rows, but the rounds record {added + extra}")
        self.add("rounds", bad, f"{len(self.rounds)} rounds agree with the rows")

    def pending(self) -> None:
        if self.fields is None or self.rounds is None or self.meta is None:
            return self.skip("pending round", "the row fields, round log or meta do not parse")
        state, bad = self.fields["state"], []
        queried = np.flatnonzero(state == State.QUERIED)
        p = self.meta.get("pending_round")
        if not p:
            if queried.size:
                bad.append(f"rows {_ids(queried)} are queried, but no round waits for answers")
            return self.add("pending round", bad, "none")
        n = len(self.rounds) + 1
        if not isinstance(p, dict):
            return self.add("pending round", ["meta.pending_round is not an object"], "")
        phase = p.get("phase")
        where = f"pending round {p.get('round')} (phase {phase!r})"
        if p.get("round") != n:
            bad.append(f"{where} should be round {n}")
        if phase not in PHASES:
            bad.append(f"{where}: unknown phase, expected one of {', '.join(PHASES)}")
        ids = self._selected(p, where, bad)
        if ids is not None and phase == "awaiting_labels":
            if "queried" in p:
                asked = np.asarray(p["queried"], dtype=np.int64).ravel()
            else:  # recorded before "queried" was: real picks were asked (as abandon.py reads it)
                asked = ids[self.fields["origin"][ids] == Origin.REAL]
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
        elif ids is not None and phase in PHASES:
            wrong = ids[state[ids] != State.LABELLED]
            if wrong.size:
                bad.append(f"{where}: selected rows {_ids(wrong)} are not labelled")
            if queried.size:
                bad.append(f"{where}: rows {_ids(queried)} are still queried")
        if phase == "awaiting_labels":
            repair = {
                "repair": f"abandon round {n} (its answers are asked again)",
                "repairable": True,
            }
        else:
            why = "its labels are committed: run `dgaal round` to finish it"
            repair = {"repair": why if phase in PHASES else f"{where} cannot be abandoned"}
        ok = (
            f"round {n} waits for {queried.size} answers"
            if queried.size
            else f"round {n} at phase {phase}"
        )
        self.add("pending round", bad, ok, **repair)
