"""Oracles: who answers the labels of selected real images.

- simulated: answers from the pool's hidden ``truth`` (the paper's protocol). This module's
  :func:`simulated_answers` is the only code that reads ``truth`` for answering.
- human: a query package (CSV, PNGs, a contact sheet, Label Studio tasks and config) goes out; a
  person's answers come back as the filled-in CSV (:func:`read_answers`) or a Label Studio export
  (:func:`read_export`), validated in full before :func:`apply_answers` (``dgaal label``) writes
  anything.

Imports no torch and no Pillow, so ``dgaal label`` starts fast on the base install.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import AnswersError
from dgaal_core.loop.label_studio import (
    ExportAnswers,
    Vote,
    label_config,
    make_task,
    png_data_uri,
    read_votes,
)
from dgaal_core.loop.label_studio import is_export as is_label_studio_export
from dgaal_core.loop.state import Phase, pending_round, set_pending
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.pool.writer import PoolWriter


def simulated_answers(reader: PoolReader, ids: np.ndarray) -> np.ndarray:
    """Labels of ``ids`` from the stored ground truth (the simulated oracle)."""
    return reader.read_truth(ids)


def write_query_package(
    out_dir: Path,
    ids: np.ndarray,
    images: np.ndarray,
    suggested: np.ndarray | None,
    class_names: list[str],
    *,
    round_no: int = 1,
    pool_id: str | None = None,
    confidence: np.ndarray | None = None,
    d1_scores: np.ndarray | None = None,
    files_root: Path | None = None,
) -> dict[str, str]:
    """Write what a person needs to label ``ids``; returns the paths written.

    - ``queries.csv``: ``id,suggested_label,label`` (fill in ``label``: a class name or index);
    - ``images/<id>.png``: each image, lossless;
    - ``contact_sheet.png``: all of them in a grid, captioned with their ids and T's suggestion
      (with its probability) when there is one;
    - ``label_config.xml``: a Label Studio image-classification config with the pool's classes;
    - ``label_studio_tasks.json``: one task per image, the image inline as a PNG data URI, T's
      class (``suggested``, with ``confidence``) as a prediction, D1's score in the data;
    - ``label_studio_tasks_local_files.json``: the same tasks, the images as Label Studio
      local-files URLs relative to ``files_root`` (default: ``out_dir``), for images too large
      to inline.
    """
    from dgaal_core.pictures import contact_sheet, png_bytes  # Pillow: only when writing pictures

    out_dir.mkdir(parents=True, exist_ok=True)
    img_dir = out_dir / "images"
    img_dir.mkdir(exist_ok=True)
    rel = img_dir.resolve().relative_to((files_root or out_dir).resolve()).as_posix()
    inline, local = [], []
    with open(out_dir / "queries.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "suggested_label", "label"])
        for k, (i, img) in enumerate(zip(ids.tolist(), images, strict=True)):
            png = png_bytes(img)
            (img_dir / f"{i}.png").write_bytes(png)
            hint = class_names[int(suggested[k])] if suggested is not None else None
            w.writerow([i, hint or "", ""])
            common: dict[str, Any] = {
                "round_no": round_no,
                "pool": pool_id,
                "suggestion": hint,
                "confidence": None if confidence is None else confidence[k],
                "d1_score": None if d1_scores is None else d1_scores[k],
            }
            inline.append(make_task(i, png_data_uri(png), **common))
            local.append(make_task(i, f"/data/local-files/?d={rel}/{i}.png", **common))
    paths = {
        "csv": out_dir / "queries.csv",
        "contact_sheet": out_dir / "contact_sheet.png",
        "label_config": out_dir / "label_config.xml",
        "label_studio": out_dir / "label_studio_tasks.json",
        "label_studio_local_files": out_dir / "label_studio_tasks_local_files.json",
        "images": img_dir,
    }
    paths["label_config"].write_text(label_config(class_names))
    paths["label_studio"].write_text(json.dumps(inline, indent=1))
    paths["label_studio_local_files"].write_text(json.dumps(local, indent=1))
    captions = [str(i) for i in ids.tolist()]
    if suggested is not None:  # T's class (and probability) under each id, as the tasks carry
        for k, lab in enumerate(suggested.tolist()):
            p = "" if confidence is None else f" ({100 * float(confidence[k]):.0f}%)"
            captions[k] += f"\n{class_names[int(lab)]}{p}"
    sheet = contact_sheet(images, captions=captions, cell=max(64, min(int(images.shape[1]), 128)))
    sheet.save(paths["contact_sheet"])
    return {k: str(v) for k, v in paths.items()}


def _parse_label(raw: str, class_names: list[str], where: str) -> int:
    raw = raw.strip()
    if raw in class_names:
        return class_names.index(raw)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if 0 <= value < len(class_names) and str(value) == raw:
        return value
    shown = ", ".join(class_names[:12]) + (" ..." if len(class_names) > 12 else "")
    raise AnswersError(f"{where}: label {raw!r} is not a class (expected one of: {shown})")


def read_answers(path: Path, reader: PoolReader, asked: set[int] | None = None) -> ExportAnswers:
    """Parse and validate an answers CSV against the pool: the new answers and how many were
    imported before.

    Accepts the ``queries.csv`` written by :func:`write_query_package` with its ``label``
    column filled in (rows left empty are skipped: answer in several sittings), or any CSV with
    ``id`` and ``label`` columns. A row answered before with the same label (the completed file
    imported again; ``asked``: the rows the pending round asked, None = any labelled row) is
    counted as ``already``. Unknown ids, ids not waiting for an answer, a changed answer, labels
    outside the classes, and repeated ids (conflicting or not) are errors naming the line.
    """
    if not path.is_file():
        raise AnswersError(f"{path}: no such answers file")
    # Parsed whole, so its size is bounded first: a row per image of the pool is at most a
    # few dozen bytes; anything far larger is the wrong file, not answers.
    limit = (1 << 20) + 256 * int(reader.states.size)
    if (size := path.stat().st_size) > limit:
        raise AnswersError(
            f"{path}: {size} bytes, more than answers for {reader.states.size} images can take "
            f"({limit} bytes at most); expected queries.csv with its label column filled in"
        )
    try:  # utf-8-sig: spreadsheets often start a UTF-8 CSV with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except UnicodeDecodeError as e:
        raise AnswersError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save the CSV as UTF-8"
        ) from None
    except csv.Error as e:
        raise AnswersError(f"{path}: not a readable CSV ({e})") from None
    fields = rows[0].keys() if rows else []
    if not rows or "id" not in fields or "label" not in fields:
        raise AnswersError(f"{path}: expected a CSV with 'id' and 'label' columns and rows")
    seen: dict[int, tuple[int, int]] = {}
    for line_no, row in enumerate(rows, start=2):
        where = f"{path}:{line_no}"
        raw_id, raw_label = (row.get("id") or "").strip(), (row.get("label") or "").strip()
        if not raw_label:
            continue
        try:
            i = int(raw_id)
        except ValueError:
            raise AnswersError(f"{where}: id {raw_id!r} is not an integer") from None
        if not 0 <= i < reader.num_rows:
            raise AnswersError(f"{where}: id {i} is not in the pool (0..{reader.num_rows - 1})")
        label = _parse_label(raw_label, reader.class_names, where)
        if i in seen:
            prev_line, prev = seen[i]
            kind = "conflicting" if prev != label else "duplicate"
            raise AnswersError(f"{where}: {kind} answer for id {i} (also on line {prev_line})")
        seen[i] = (line_no, label)
    if not seen:
        raise AnswersError(f"{path}: no answers (the 'label' column is empty)")
    ids, labels, already = [], [], 0
    for i, (line_no, label) in seen.items():
        if _is_new_answer(reader, i, label, f"{path}:{line_no}", asked, "file"):
            ids.append(i)
            labels.append(label)
        else:
            already += 1
    return _answers_of(ids, labels, already=already)


def _is_new_answer(
    reader: PoolReader, pid: int, label: int, where: str, asked: set[int] | None, source: str
) -> bool:
    """Whether ``label`` for row ``pid`` is an answer to import (the row is queried), or one
    imported before (the same label for a row this round asked: a re-import of a completed
    file, counted, not an error). A changed answer and a row nobody asked about are errors."""
    state, names = reader.states[pid], reader.class_names
    if state == State.QUERIED:
        return True
    was_asked = asked is None or pid in asked
    if state == State.LABELLED and was_asked and reader.labels[pid] == label:
        return False
    if state == State.LABELLED and was_asked and reader.labels[pid] >= 0:
        raise AnswersError(
            f"{where}: id {pid} was imported as {names[reader.labels[pid]]!r}, the {source} "
            f"now says {names[label]!r}; nothing imported (an imported answer is final; "
            "`dgaal round --abandon` before the round finishes discards them all)"
        )
    why = "labelled before this round" if state == State.LABELLED else "not queried"
    raise AnswersError(f"{where}: id {pid} is not waiting for an answer ({why})")


def _answers_of(ids: list[int], labels: list[int], **counts: Any) -> ExportAnswers:
    order = np.argsort(np.asarray(ids, dtype=np.int64))
    return ExportAnswers(
        ids=np.asarray(ids, dtype=np.int64)[order],
        labels=np.asarray(labels, dtype=np.int64)[order],
        **counts,
    )


def _export_conflicts(by_id: dict[int, list[tuple[int, str]]], names: list[str]) -> None:
    conflicts = [pid for pid, xs in by_id.items() if len({lab for lab, _ in xs}) > 1]
    if conflicts:
        pid = conflicts[0]
        shown = ", ".join(sorted({repr(names[lab]) for lab, _ in by_id[pid]}))
        raise AnswersError(
            f"{by_id[pid][0][1]}: id {pid} has conflicting annotations {shown} "
            f"({len(conflicts)} such tasks, nothing imported); settle them in Label Studio and "
            "export again"
        )


def read_export(
    path: Path, reader: PoolReader, round_no: int, asked: set[int] | None = None
) -> ExportAnswers:
    """Parse and validate a Label Studio export (JSON, JSON-MIN, CSV or TSV) of the tasks
    :func:`write_query_package` wrote, for the pending round ``round_no``.

    Several annotations of one task that agree count once; ones that disagree are a conflict
    (an error, nothing written). Skipped (cancelled) or unannotated tasks leave their image
    queried. Tasks of other rounds (one project kept across rounds) are ignored, as are answers
    imported before with the same label; tasks of another pool are an error.
    """
    votes: list[Vote] = read_votes(path)
    if not votes:
        raise AnswersError(f"{path}: no tasks in this export")
    states, names = reader.states, reader.class_names
    other, unanswered = 0, set()
    by_id: dict[int, list[tuple[int, str]]] = {}
    for v in votes:
        if v.pool is not None and reader.pool_id is not None and v.pool != reader.pool_id:
            raise AnswersError(
                f"{v.where}: a task of another pool (pool id {v.pool}; this pool's id is "
                f"{reader.pool_id})"
            )
        if v.round_no is not None and int(v.round_no) != round_no:
            other += 1
            continue
        if not 0 <= v.row < reader.num_rows:
            raise AnswersError(
                f"{v.where}: id {v.row} is not in the pool (0..{reader.num_rows - 1})"
            )
        if v.label is None:
            unanswered.add(v.row)
        else:
            by_id.setdefault(v.row, []).append((_parse_label(v.label, names, v.where), v.where))
    _export_conflicts(by_id, names)
    ids, labels, already = [], [], 0
    for pid, votes_of in by_id.items():
        label, where = votes_of[0]
        if _is_new_answer(reader, pid, label, where, asked, "export"):
            ids.append(pid)
            labels.append(label)
        else:
            already += 1  # imported from an earlier export of the same project
    if not ids and not already:
        rounds = f"; {other} tasks of other rounds ignored" if other else ""
        raise AnswersError(
            f"{path}: no answers for round {round_no} ({len(unanswered)} tasks skipped or "
            f"not annotated{rounds})"
        )
    return _answers_of(
        ids,
        labels,
        unanswered=sorted(p for p in unanswered if p not in by_id and states[p] == State.QUERIED),
        other_rounds=other,
        already=already,
    )


@dataclass(frozen=True)
class ImportedAnswers:
    """What ``dgaal label`` did."""

    round: int
    answered: int  # answers written now
    still_queried: int  # rows still waiting for one
    skipped: int = 0  # Label Studio tasks skipped or not annotated
    other_rounds: int = 0  # tasks of other rounds in the same project, ignored
    already: int = 0  # answers imported before with the same label
    waiting: tuple[int, ...] = ()  # the rows still waiting, ascending

    def waiting_ids(self, most: int = 10) -> str:
        """``id 8`` / ``ids 8, 9, 12`` / ``ids 8, 9, ... (40 more)``: which rows still wait."""
        if not self.waiting:
            return ""
        shown = ", ".join(str(i) for i in self.waiting[:most])
        more = f", ... ({len(self.waiting) - most} more)" if len(self.waiting) > most else ""
        return f"id{'s' if len(self.waiting) > 1 else ''} {shown}{more}"


def apply_answers(pool_path: Path, answers: Path) -> ImportedAnswers:
    """``dgaal label``: import a person's answers for queried rows of the pending round.

    ``answers`` is the filled-in ``queries.csv`` (any CSV with ``id`` and ``label``) or a Label
    Studio export of the round's tasks (JSON, JSON-MIN, CSV or TSV; see :func:`read_export`).
    Everything is validated before anything is written. When no queried row is left, the
    pending round moves on to phase ``selected`` and the next ``dgaal round`` finishes it.
    """
    answers = Path(answers)
    with PoolWriter(pool_path, purpose="dgaal label") as w, PoolReader(pool_path) as r:
        pending = pending_round(r)
        n = pending.round if pending is not None else len(r.rounds()) + 1
        # the rows this round asked: those a re-imported answer may repeat
        asked_rows = (
            np.flatnonzero(r.fields["round"] == n)
            if pending is None
            else pending.asked(r.fields["origin"])
        )
        asked = set(asked_rows.tolist())
        if answers.is_file() and is_label_studio_export(answers):
            got = read_export(answers, r, n, asked)
        else:
            got = read_answers(answers, r, asked)
        ids, labels = got.ids, got.labels
        if ids.size:
            w.set_labels(ids, labels)
            w.set_state(ids, State.LABELLED, round_no=n)
        waiting = np.flatnonzero(w.field("state") == State.QUERIED)
        # the last answer moves a waiting round on; a round already past that (a completed
        # file imported again while x_g are generated) keeps its phase: nothing is redone
        if pending is not None and waiting.size == 0 and pending.phase is Phase.AWAITING_LABELS:
            set_pending(w, pending.moved(Phase.SELECTED))
        w.commit()
    return ImportedAnswers(
        n, int(ids.size), int(waiting.size), skipped=len(got.unanswered),
        other_rounds=got.other_rounds, already=got.already, waiting=tuple(waiting.tolist()),
    )  # fmt: skip
