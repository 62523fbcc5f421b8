"""Label Studio as a live loop (``dgaal serve label-studio``): an ML backend for one project.

Label Studio reaches the backend over HTTP (its ML-backend protocol: ``GET /health``,
``POST /setup``, ``POST /predict``) and calls ``POST /webhook`` on annotation events (a project
webhook the backend registers). One worker thread does every write to the pool, in order:

1. a round waiting for answers gets its tasks into the project (those not there yet), and the
   project's annotations for it are imported exactly as ``dgaal label`` imports an export (the
   same validation: a changed answer or a conflict is refused in one line, and waits);
2. once every query of the round is answered, the round is finished (co-evolution, x_g, T)
   and the next one runs to its selection; its tasks, with T's class as a prediction, are
   imported into the project through the SDK.

A webhook only wakes the worker: each pass reads the project's full export, so an annotation
made while the backend was down, or a webhook lost, is picked up by the next pass (and by the
first one at start). Rounds are the crash-safe rounds of :mod:`dgaal_core.loop.round`: a
killed backend leaves the pool as a killed ``dgaal round`` or ``dgaal label`` would, and the
next start goes on from there.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import DgaalError
from dgaal_core.loop.config import RoundConfig
from dgaal_core.loop.label_studio import ID_FIELD, label_config, read_votes
from dgaal_core.loop.oracle import apply_answers
from dgaal_core.loop.round import AwaitingLabels, Round
from dgaal_core.loop.serving import Exporter
from dgaal_core.loop.state import Phase, pending_round
from dgaal_core.loop.workdir import QUERIES_DIR, round_dir, work_dir
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State
from dgaal_core.values import plural

TASKS_FILE = "label_studio_tasks.json"
EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
POLL_S = 30.0  # a pass now and then even without webhooks (one may have been lost)


class Stopped(BaseException):
    """The backend is shutting down: raised at the round's next safe point (a BaseException,
    so no ``except Exception`` on the way eats it)."""


@dataclass(frozen=True)
class LiveSettings:
    """Where the pool, Label Studio and this backend are."""

    pool: Path
    label_studio: str  # Label Studio's URL, as this backend reaches it
    api_key: str  # a personal access token (or a legacy token) of a Label Studio user
    backend_url: str  # this backend's URL, as Label Studio reaches it
    project: int | None = None  # None: a project named after the pool, created if missing
    workdir: Path | None = None


class LiveLoop:
    """The pool side of the live loop: what the worker thread and the HTTP handlers share."""

    def __init__(
        self,
        settings: LiveSettings,
        config: RoundConfig,
        exporter: Exporter,
        say: Callable[[str], None],
        *,
        embedder: Any = None,
    ) -> None:
        from label_studio_sdk import LabelStudio

        self.s, self.config, self.exporter, self.say = settings, config, exporter, say
        self.embedder = embedder
        self.ls = LabelStudio(base_url=settings.label_studio, api_key=settings.api_key)
        self.workdir = settings.workdir or work_dir(settings.pool)
        self.wake = queue.Queue[str]()
        self.stop = threading.Event()
        self.project = 0
        self.rounds = 0  # rounds finished, for the model version Label Studio is told
        self._packages: dict[int, dict[int, dict[str, Any]]] = {}  # round -> id -> task
        self._said_changed: set[tuple[int, str]] = set()  # changed answers already reported
        self.failure: BaseException | None = None  # what ended the worker, if not a stop
        self.pool_id = ""

    # ---- Label Studio: the project, the backend and the webhook --------------------------------
    def connect(self) -> int:
        """The project (found or created), with this backend and its webhook registered."""
        with PoolReader(self.s.pool) as r:
            classes, self.rounds, self.pool_id = r.class_names, len(r.rounds()), r.pool_id or ""
        title = project_title(self.s.pool, self.pool_id)
        try:
            if self.s.project is None:
                found = [p for p in self.ls.projects.list() if p.title == title]
                project = found[0] if found else None
                if project is None:
                    project = self.ls.projects.create(
                        title=title, label_config=label_config(classes)
                    )
                    self.say(f"created Label Studio project {project.id} ({title!r})")
                self.project = int(project.id)
            else:
                self.project = int(self.ls.projects.get(id=self.s.project).id)
            url = self.s.backend_url.rstrip("/")
            if not any(m.url.rstrip("/") == url for m in self.ls.ml.list(project=self.project)):
                self.ls.ml.create(
                    project=self.project, url=url, title="dgaal", is_interactive=False
                )
            hook = f"{url}/webhook"
            if not any(h.url == hook for h in self.ls.webhooks.list(project=str(self.project))):
                self.ls.webhooks.create(
                    url=hook, project=self.project, send_payload=True,
                    send_for_all_actions=False, actions=list(EVENTS),
                )  # fmt: skip
        except Exception as e:  # the SDK's errors: one line naming what Label Studio said
            raise DgaalError(f"Label Studio at {self.s.label_studio}: {_said(e)}") from None
        return self.project

    def _import(self, n: int, queries: Path) -> None:
        """The tasks of round ``n`` that the project does not hold yet."""
        if not (queries / TASKS_FILE).is_file():
            raise DgaalError(
                f"round {n}'s tasks are not in {queries}: give --workdir where the round ran"
            )
        self._packages.pop(n, None)  # its suggestions are read afresh for /predict
        tasks = json.loads((queries / TASKS_FILE).read_text())
        have = {
            (t.data.get("dgaal_pool"), t.data.get("dgaal_round"), t.data.get(ID_FIELD))
            for t in self.ls.tasks.list(project=self.project)
            if isinstance(t.data, dict)
        }
        new = [
            t for t in tasks
            if (t["data"].get("dgaal_pool"), t["data"]["dgaal_round"], t["data"][ID_FIELD])
            not in have
        ]  # fmt: skip
        if new:
            self.ls.projects.import_tasks(id=self.project, request=new)
            self.say(f"round {n}: {plural(len(new), 'task')} imported into project {self.project}")

    # ---- one pass of the worker ----------------------------------------------------------------
    def step(self) -> None:
        """Bring the pool and the project up to date (see the module docstring)."""
        with PoolReader(self.s.pool) as r:
            pending, n = pending_round(r), len(r.rounds()) + 1
            asked = set() if pending is None else set(pending.asked(r.fields["origin"]).tolist())
        if pending is not None and pending.phase is Phase.AWAITING_LABELS:
            self._import(n, round_dir(self.workdir, n) / QUERIES_DIR)
            if not self._pull_answers(n, asked):
                return
        outcome = self._round()  # finishes the answered round, or starts the next one
        if not isinstance(outcome, AwaitingLabels):
            acc = (
                "" if outcome.accuracy is None else f", test accuracy {100 * outcome.accuracy:.2f}%"
            )
            self.say(f"round {outcome.round} finished ({outcome.labelled} labelled{acc})")
            self.rounds = outcome.round
            outcome = self._round()
        if isinstance(outcome, AwaitingLabels):
            self._import(outcome.round, outcome.queries)
            self.say(f"round {outcome.round}: waiting for {plural(outcome.queried, 'answer')}")

    def _round(self) -> Any:
        def safe_point(stage: str, done: int, total: int, /, **info: float) -> None:
            if self.stop.is_set():
                raise Stopped(stage)

        job = Round(
            self.s.pool, self.config, self.exporter, workdir=self.s.workdir, progress=safe_point,
            log=self.say, embedder=self.embedder,
        )  # fmt: skip
        return job.run()

    def _pull_answers(self, n: int, asked: set[int]) -> bool:
        """Import the project's answers for round ``n``'s queried rows; whether it has all it
        asked for. Tasks dgaal did not write, of another pool or of another run of round ``n``
        (one abandoned) are left alone; an answer changed after its import is said once and
        the imported one stands (answers are final), so it never blocks the others."""
        blob = b"".join(
            self.ls.projects.exports.download_sync(
                self.project, export_type="JSON", download_all_tasks=True
            )
        )
        tasks = [
            t for t in json.loads(blob or b"[]")
            if isinstance(t, dict) and isinstance(t.get("data"), dict)
            and t["data"].get("dgaal_round") == n and t["data"].get(ID_FIELD) in asked
            and t["data"].get("dgaal_pool") in (None, self.pool_id)
        ]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="dgaal-ls-") as tmp:
            export = Path(tmp) / f"project-{self.project}.json"
            export.write_text(json.dumps(tasks))
            with PoolReader(self.s.pool) as r:
                states, labels, names = r.states, r.labels, r.class_names
            waiting = []
            for v in read_votes(export) if tasks else []:
                if v.label is None:
                    continue
                if states[v.row] == State.QUERIED:
                    waiting.append(v.row)
                elif names[labels[v.row]] != v.label and (v.row, v.label) not in self._said_changed:
                    self._said_changed.add((v.row, v.label))
                    self.say(
                        f"round {n}: id {v.row} was imported as {names[labels[v.row]]!r}; Label "
                        f"Studio now says {v.label!r}: the imported answer stands (answers are "
                        "final)"
                    )
            if not waiting:
                return not np.any(states[list(asked)] == State.QUERIED) if asked else False
            keep = [t for t in tasks if t["data"][ID_FIELD] in set(waiting)]
            export.write_text(json.dumps(keep))
            out = apply_answers(self.s.pool, export)
        if out.answered:
            left = f"; {out.still_queried} still waiting" if out.still_queried else ""
            self.say(f"round {n}: {plural(out.answered, 'answer')} imported{left}")
        return out.still_queried == 0

    def work(self) -> None:
        """The worker thread: a pass at start, after each webhook, and every POLL_S. A fault of
        Label Studio (down, refusing) or of the answers is said and retried; anything else is a
        failure that ends the command (``failure``, raised by the main thread)."""
        while not self.stop.is_set():
            try:
                self.step()
            except Stopped:
                return
            except DgaalError as e:  # bad answers, a lock held by `dgaal label`: say, then wait
                self.say(f"error: {e}")
            except Exception as e:
                if not _from_label_studio(e):
                    self.failure = e
                    return
                self.say(f"error: Label Studio at {self.s.label_studio}: {_said(e)}")
            try:
                self.wake.get(timeout=POLL_S)
                while not self.wake.empty():  # a burst of events: one pass for all of them
                    self.wake.get_nowait()
            except queue.Empty:
                pass

    # ---- the ML-backend protocol ---------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return f"dgaal-round-{self.rounds}"

    def predict(self, tasks: list[Any]) -> list[dict[str, Any]]:
        """One prediction per task: T's class and probability from the query package of the
        round that asked (with D1's score), or an empty one for a task dgaal did not write."""
        out = []
        for task in tasks:
            data = task.get("data", {}) if isinstance(task, dict) else {}
            found = self._asked(data.get("dgaal_round"), data.get(ID_FIELD))
            pred = (found or {}).get("predictions", [{}])[0]
            out.append({
                "result": pred.get("result", []),
                "score": pred.get("score", 0.0),
                "model_version": pred.get("model_version", self.model_version),
                "d1_score": data.get("d1_score"),
            })  # fmt: skip
        return out

    def _asked(self, n: Any, pid: Any) -> dict[str, Any] | None:
        if not isinstance(n, int) or not isinstance(pid, int):
            return None
        if n not in self._packages:
            path = round_dir(self.workdir, n) / QUERIES_DIR / TASKS_FILE
            tasks = json.loads(path.read_text()) if path.is_file() else []
            self._packages[n] = {t["data"][ID_FIELD]: t for t in tasks}
        return self._packages[n].get(pid)


def _from_label_studio(e: BaseException) -> bool:
    """Whether ``e`` is the SDK's or the HTTP client's (Label Studio down or refusing)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        import httpx

        network: tuple[type[BaseException], ...] = (httpx.HTTPError,)
    except ImportError:  # pragma: no cover - the SDK depends on httpx
        network = ()
    return isinstance(e, (ApiError, ConnectionError, TimeoutError, *network))


def _said(e: Exception) -> str:
    """The one line of an SDK or HTTP error: the status and Label Studio's own detail."""
    status, body = getattr(e, "status_code", None), getattr(e, "body", None)
    if status is not None:
        detail = (
            body.get("detail") or body.get("validation_errors") or body
            if isinstance(body, dict)
            else body
        )
        return f"HTTP {status}: {str(detail)[:300]}".replace("\n", " ")
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def project_title(pool: Path, pool_id: str) -> str:
    """The project a pool's rounds go to unless ``--project`` names one: one per pool, so two
    ``pools.h5`` in different folders never share one."""
    return f"dgaal: {pool.name} ({pool_id})" if pool_id else f"dgaal: {pool.name}"


def app(loop: LiveLoop) -> Any:
    """The Starlette app Label Studio talks to."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "dgaal", "rounds": loop.rounds})

    async def setup(_: Request) -> JSONResponse:
        return JSONResponse({"model_version": loop.model_version})

    async def predict(request: Request) -> JSONResponse:
        body = await body_of(request)
        if body is None or not isinstance(body.get("tasks", []), list):
            return JSONResponse({"error": 'expected {"tasks": [...]}'}, status_code=400)
        return JSONResponse({"results": loop.predict(body.get("tasks") or [])})

    async def body_of(request: Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def webhook(request: Request) -> JSONResponse:
        body = await body_of(request)
        if body is None:
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        project = body.get("project")
        if not isinstance(project, dict) or project.get("id") in (None, loop.project):
            loop.wake.put(str(body.get("action")))
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/health", health), Route("/", health), Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]), Route("/webhook", webhook, methods=["POST"]),
    ])  # fmt: skip
