"""Label Studio out and back: tasks that carry T's suggestion and D1's score, the labelling
config, and the project's exports (JSON, JSON-MIN, CSV/TSV) read back as answers.

Plain JSON, XML and CSV: nothing here imports Label Studio or its SDK, so ``dgaal label`` reads
an export on the base install. Every task dgaal writes carries ``data.dgaal_id`` (the pool row),
``data.dgaal_round`` and ``data.dgaal_pool`` (the pool's id); those, not Label Studio's own task
ids, map an export back to the pool.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from dgaal_core.errors import AnswersError

# The <Choices> and <Image> names of the config: Label Studio's JSON-MIN and CSV exports name
# the answer's column after FROM_NAME, and predictions must use both to pre-select a choice.
FROM_NAME = "label"
TO_NAME = "image"
ID_FIELD = "dgaal_id"

# An export is parsed whole; inline images make it a few KB per task, so this bounds memory
# without refusing any real export of a pool that fits on one machine.
MAX_EXPORT_BYTES = 2 << 30


def label_config(class_names: Sequence[str]) -> str:
    """The labelling config for an image-classification project with the pool's classes."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in class_names)
    return (
        "<View>\n"
        # small images (8x8 digits, 32x32 CIFAR) scaled up to a readable size, pixels kept sharp
        f'  <Image name="{TO_NAME}" value="$image" maxWidth="384px" smoothing="false" '
        'zoom="true"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" '
        'showInLine="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: an image Label Studio shows with no storage set up."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def make_task(
    row: int,
    image: str,
    *,
    round_no: int,
    pool: str | None,
    suggestion: str | None = None,
    confidence: float | None = None,
    d1_score: float | None = None,
) -> dict[str, Any]:
    """One task: ``data`` for the config and the way back, plus T's class as a prediction.

    ``image`` is a data URI or a URL Label Studio can open. ``d1_score`` (lower = picked first)
    lands in ``data`` so the Data Manager can show and sort by it.
    """
    data: dict[str, Any] = {"image": image, ID_FIELD: row, "dgaal_round": round_no}
    if pool is not None:
        data["dgaal_pool"] = pool
    if d1_score is not None:
        data["d1_score"] = round(float(d1_score), 6)
    task: dict[str, Any] = {"data": data}
    if suggestion is not None:
        data["suggested"] = suggestion
        prediction: dict[str, Any] = {
            "model_version": f"dgaal-round-{round_no}",
            "result": [
                {
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "choices",
                    "value": {"choices": [suggestion]},
                }
            ],
        }
        if confidence is not None:
            prediction["score"] = round(float(confidence), 6)
        task["predictions"] = [prediction]
    return task


@dataclass
class Vote:
    """One annotation (or a task without one) from an export: ``label`` None means no answer."""

    row: int  # the pool row (``data.dgaal_id``)
    label: str | None
    where: str
    round_no: int | None = None
    pool: str | None = None


@dataclass
class ExportAnswers:
    """What an export says about the pending round, validated against the pool."""

    ids: np.ndarray
    labels: np.ndarray
    unanswered: list[int] = field(default_factory=list)  # skipped, cancelled or not annotated
    other_rounds: int = 0  # tasks of earlier rounds in the same project: ignored
    already: int = 0  # answers imported before (same label): ignored


def is_export(path: Path) -> bool:
    """Whether ``path`` looks like a Label Studio export (JSON, or a CSV/TSV with ``dgaal_id``)
    rather than dgaal's own ``queries.csv``."""
    if path.suffix.lower() == ".json":
        return True
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return False
    return ID_FIELD in header.replace('"', "").replace("\t", ",").strip().split(",")


def _int(raw: Any, where: str, what: str) -> int:
    if isinstance(raw, bool):
        raise AnswersError(f"{where}: {what} {raw!r} is not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    try:
        return int(str(raw).strip())
    except ValueError:
        raise AnswersError(f"{where}: {what} {raw!r} is not an integer") from None


def _choice(value: Any, where: str) -> str | None:
    """A JSON-MIN/CSV answer cell: a class name, ``{"choices": [...]}``, or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("choices", [])
    if isinstance(value, list):
        if len(value) > 1:
            raise AnswersError(f"{where}: {len(value)} choices {value!r}; expected one class")
        return str(value[0]) if value else None
    return str(value)


def _json_votes(tasks: list[Any], path: Path) -> Iterator[Vote]:
    """Label Studio's JSON export: tasks with ``data`` and ``annotations``. Predictions (T's
    suggestions) are never answers; cancelled (skipped) annotations are no answer."""
    for k, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise AnswersError(f"{path}: item {k} is not a Label Studio task (no 'data')")
        data, ls_id = task["data"], task.get("id", "?")
        where = f"{path}: task {ls_id}"
        if ID_FIELD not in data:
            raise AnswersError(f"{where} has no data.{ID_FIELD}: not a task dgaal wrote")
        pid = _int(data[ID_FIELD], where, ID_FIELD)
        rnd, pool = data.get("dgaal_round"), data.get("dgaal_pool")
        round_no = None if rnd is None else _int(rnd, where, "dgaal_round")
        pool = None if pool is None else str(pool)
        answered = False
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict):
                raise AnswersError(f"{where}: an annotation is not a JSON object")
            if ann.get("was_cancelled"):
                continue
            at = f"{where} (annotation {ann.get('id', '?')})"
            choices = [r for r in ann.get("result") or [] if r.get("type") == "choices"]
            # dgaal's <Choices name="label">; a project with its own config may name it otherwise
            picks = [r for r in choices if r.get("from_name") == FROM_NAME] or choices
            if len(picks) > 1:
                raise AnswersError(f"{at}: {len(picks)} choice fields; expected one class")
            if not picks:
                continue
            label = _choice(picks[0].get("value", {}), at)
            if label is not None:
                answered = True
                yield Vote(pid, label, at, round_no, pool)
        if not answered:
            yield Vote(pid, None, where, round_no, pool)


def _flat_votes(rows: list[dict[str, Any]], where_of: Any) -> Iterator[Vote]:
    """JSON-MIN and CSV: one row per annotation (or per task without one), the data's fields
    flattened beside the answer column named after the config's ``<Choices>``."""
    for k, row in enumerate(rows):
        where = where_of(k)
        if not isinstance(row, dict) or ID_FIELD not in row:
            raise AnswersError(f"{where}: no '{ID_FIELD}': not a task dgaal wrote")
        pid = _int(row[ID_FIELD], where, ID_FIELD)
        rnd, pool = row.get("dgaal_round"), row.get("dgaal_pool")
        yield Vote(
            pid,
            _choice(row.get(FROM_NAME), where),
            where,
            round_no=None if rnd in (None, "") else _int(rnd, where, "dgaal_round"),
            pool=None if pool in (None, "") else str(pool),
        )


def read_votes(path: Path) -> list[Vote]:
    """Every answer (and every unanswered task) of a Label Studio export, in file order."""
    if not path.is_file():
        raise AnswersError(f"{path}: no such export file")
    if (size := path.stat().st_size) > MAX_EXPORT_BYTES:
        raise AnswersError(f"{path}: {size} bytes, too large for a Label Studio export")
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AnswersError(f"{path}: not a JSON export ({e})") from None
        if not isinstance(items, list):
            raise AnswersError(f"{path}: expected a JSON list of tasks (Label Studio's export)")
        if items and isinstance(items[0], dict) and "data" in items[0]:
            return list(_json_votes(items, path))
        _check_answer_column(items, path)  # JSON-MIN
        return list(_flat_votes(items, lambda k: f"{path}: item {k}"))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh, delimiter=delimiter))
    except UnicodeDecodeError:
        raise AnswersError(f"{path}: not UTF-8 text") from None
    except csv.Error as e:
        raise AnswersError(f"{path}: not a readable CSV ({e})") from None
    _check_answer_column(rows, path)
    return list(_flat_votes(rows, lambda k: f"{path}:{k + 2}"))


def _check_answer_column(rows: list[Any], path: Path) -> None:
    """JSON-MIN and CSV name the answer after the config's <Choices>: without that column the
    export would read as "nothing answered", so say why instead."""
    annotated = [
        r for r in rows if isinstance(r, dict) and r.get("annotation_id") not in (None, "")
    ]
    if annotated and not any(FROM_NAME in r for r in annotated):
        raise AnswersError(
            f"{path}: annotations but no '{FROM_NAME}' column; the project's <Choices> must be "
            f"named '{FROM_NAME}' as in dgaal's label_config.xml (or export as JSON)"
        )
