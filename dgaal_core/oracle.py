"""Oracles: who answers the labels of selected real images.

- simulated: answers from the pool's hidden ``truth`` (the paper's protocol). This module's
  :func:`simulated_answers` is the only code that reads ``truth`` for answering.
- human: a query package (CSV, PNGs, a contact sheet, Label Studio tasks) goes out; a person's
  answers CSV comes back through :func:`read_answers`, which validates everything before
  :func:`apply_answers` (``dgaal label``) writes anything.

Imports no torch, so ``dgaal label`` starts fast.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .errors import DgaalError
from .pictures import contact_sheet, save_png
from .pool import PoolReader
from .pool_writer import PoolWriter
from .schema import State


class AnswersError(DgaalError):
    """An answers file for ``dgaal label`` is invalid (one line says which row and why)."""


def simulated_answers(reader: PoolReader, ids: np.ndarray) -> np.ndarray:
    """Labels of ``ids`` from the stored ground truth (the simulated oracle)."""
    return reader.read_truth(ids)


def write_query_package(
    out_dir: Path,
    ids: np.ndarray,
    images: np.ndarray,
    suggested: np.ndarray | None,
    class_names: list[str],
) -> dict[str, str]:
    """Write what a person needs to label ``ids``; returns the paths written.

    - ``queries.csv``: ``id,suggested_label,label`` (fill in ``label``: a class name or index);
    - ``images/<id>.png``: each image, lossless;
    - ``contact_sheet.png``: all of them in a grid, captioned with their ids;
    - ``label_studio_tasks.json``: tasks for Label Studio's image classification template
      (``data.image`` is a local-files URL relative to the package folder).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    img_dir = out_dir / "images"
    img_dir.mkdir(exist_ok=True)
    tasks = []
    with open(out_dir / "queries.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "suggested_label", "label"])
        for k, (i, img) in enumerate(zip(ids.tolist(), images, strict=True)):
            save_png(img, img_dir / f"{i}.png")
            hint = class_names[int(suggested[k])] if suggested is not None else ""
            w.writerow([i, hint, ""])
            task: dict = {"id": i, "data": {"image": f"/data/local-files/?d=images/{i}.png"}}
            if hint:
                task["predictions"] = [
                    {
                        "model_version": "dgaal-T",
                        "result": [
                            {
                                "from_name": "choice",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [hint]},
                            }
                        ],
                    }
                ]
            tasks.append(task)
    (out_dir / "label_studio_tasks.json").write_text(json.dumps(tasks, indent=1))
    sheet = contact_sheet(images, captions=[str(i) for i in ids.tolist()])
    sheet.save(out_dir / "contact_sheet.png")
    return {
        "csv": str(out_dir / "queries.csv"),
        "contact_sheet": str(out_dir / "contact_sheet.png"),
        "label_studio": str(out_dir / "label_studio_tasks.json"),
        "images": str(img_dir),
    }


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


def read_answers(path: Path, reader: PoolReader) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an answers CSV against the pool; returns ``(ids, labels)``.

    Accepts the ``queries.csv`` written by :func:`write_query_package` with its ``label``
    column filled in (rows left empty are skipped: answer in several sittings), or any CSV with
    ``id`` and ``label`` columns. Unknown ids, ids not waiting for an answer, labels outside the
    classes, and repeated ids (conflicting or not) are errors naming the line.
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
    states = reader.states
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
        if states[i] != State.QUERIED:
            raise AnswersError(f"{where}: id {i} is not waiting for an answer (not queried)")
        label = _parse_label(raw_label, reader.class_names, where)
        if i in seen:
            prev_line, prev = seen[i]
            kind = "conflicting" if prev != label else "duplicate"
            raise AnswersError(f"{where}: {kind} answer for id {i} (also on line {prev_line})")
        seen[i] = (line_no, label)
    if not seen:
        raise AnswersError(f"{path}: no answers (the 'label' column is empty)")
    ids = np.fromiter(seen.keys(), dtype=np.int64)
    labels = np.fromiter((v for _, v in seen.values()), dtype=np.int64)
    order = np.argsort(ids)
    return ids[order], labels[order]


def apply_answers(pool_path: Path, answers_csv: Path) -> dict[str, int]:
    """``dgaal label``: import a person's answers for queried rows of the pending round.

    Everything is validated before anything is written (see :func:`~dgaal_core.oracle.
    read_answers`). When no queried row is left, the pending round moves on to phase
    ``selected`` and the next ``dgaal round`` finishes it.
    """
    with PoolWriter(pool_path, purpose="dgaal label") as w, PoolReader(pool_path) as r:
        ids, labels = read_answers(Path(answers_csv), r)
        pending = r.meta.get("pending_round") or {}
        n = int(pending.get("round", len(r.rounds()) + 1))
        w.set_labels(ids, labels)
        w.set_state(ids, State.LABELLED, round_no=n)
        left = int(np.sum(w.field("state") == State.QUERIED))
        if pending and left == 0:
            w.update_meta(pending_round={**pending, "phase": "selected"})
        w.commit()
    return {"answered": int(ids.size), "still_queried": left, "round": n}
