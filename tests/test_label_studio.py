"""End to end with a real Label Studio: a human-oracle round's tasks go into a project made with
dgaal's config, annotations come back through Label Studio's API, its exports go through
``dgaal label``, and the pool holds exactly those answers; then ``dgaal serve label-studio``
runs rounds as annotations arrive, with no file moved by hand.

Starts ``label-studio`` (the ``labelstudio`` extra) on 127.0.0.1 with a temporary data folder
while the round trains (its first start migrates a fresh database: a minute or two), and stops it
at the end. On CI (``CI`` set) a missing extra fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dgaal_core.loop.label_studio import FROM_NAME, TO_NAME
from dgaal_core.loop.oracle import read_export
from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import State

pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.slow,
    # the SDK's own use of a pydantic v1 method
    pytest.mark.filterwarnings("ignore:The `parse_obj` method is deprecated"),
]

if not os.environ.get("CI") and importlib.util.find_spec("label_studio") is None:
    pytest.skip(
        "needs the labelstudio extra: pip install 'dgaal[labelstudio]'", allow_module_level=True
    )

from label_studio_server import PASSWORD, USER, Server, start  # noqa: E402
from pools import script  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The server conftest started after collection (or one started now), shared by this
    file's tests (one migration of its database), stopped after them."""
    s = start()
    try:
        yield s
    finally:
        s.stop()


def dgaal(*args: str) -> str:
    return script(*args, check=True).stdout


_LOGINS: dict[str, tuple] = {}  # a user has one personal access token: made once per server


def _login(url: str):
    """A browser-like session (it can open local files) and a personal access token for the
    SDK: what a person gets from the UI's login and Account & Settings page."""
    if url not in _LOGINS:
        _LOGINS[url] = _new_login(url)
    return _LOGINS[url]


def _new_login(url: str):
    import requests

    s = requests.Session()
    s.get(f"{url}/user/login/", timeout=30)
    form = {"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": s.cookies["csrftoken"]}
    r = s.post(f"{url}/user/login/", data=form, headers={"Referer": url}, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    r = s.post(f"{url}/api/token/", headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": url})
    assert r.status_code == 201, r.text[:500]
    return s, r.json()["token"]


def _choice(name: str) -> list[dict]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
             "value": {"choices": [name]}}]  # fmt: skip


def _export(ls, project: int, kind: str, path: Path) -> Path:
    blob = b"".join(
        ls.projects.exports.download_sync(project, export_type=kind, download_all_tasks=True)
    )
    path.write_bytes(blob)
    return path


def test_label_studio_round_trip(server):
    from label_studio_sdk import LabelStudio

    tmp_path = server.root  # Label Studio's local-files document root: the pool lives in it
    pool, work = tmp_path / "pools.h5", tmp_path / "pools.dgaal"
    dgaal("pool", "create", str(pool), "--from", "digits", "--initial", "0.1", "--seed", "3")
    dgaal("round", "--pool", str(pool), "--oracle", "human", "--gan-steps", "6",
          "--task-epochs", "3", "--task-min-steps", "0", "--budget", "12", "--quiet")  # fmt: skip
    queries = work / "round-0001" / "queries"
    tasks = json.loads((queries / "label_studio_tasks.json").read_text())
    with PoolReader(pool) as r:
        classes, pool_id = r.class_names, r.pool_id
    assert len(tasks) == 12 and {t["data"]["dgaal_pool"] for t in tasks} == {pool_id}

    server.wait()
    session, token = _login(server.url)
    ls = LabelStudio(base_url=server.url, api_key=token)
    project = ls.projects.create(
        title="dgaal round 1", label_config=(queries / "label_config.xml").read_text()
    )
    ls.projects.import_tasks(id=project.id, request=tasks)
    # The images: inline data URIs are the PNGs dgaal wrote; the local-files variant is served
    # by Label Studio once a Local Files storage covers the workdir.
    ls.import_storage.local.create(project=project.id, path=str(work), title="dgaal workdir")
    local = json.loads((queries / "label_studio_tasks_local_files.json").read_text())
    for inline_task, local_task in zip(tasks[:2], local[:2], strict=True):
        pid = inline_task["data"]["dgaal_id"]
        png = (queries / "images" / f"{pid}.png").read_bytes()
        assert base64.b64decode(inline_task["data"]["image"].split(",", 1)[1]) == png
        got = session.get(server.url + local_task["data"]["image"], timeout=30)
        assert got.status_code == 200 and got.content == png

    by_pid = {t.data["dgaal_id"]: t for t in ls.tasks.list(project=project.id)}
    assert sorted(by_pid) == sorted(t["data"]["dgaal_id"] for t in tasks)
    pids = sorted(by_pid)
    suggested = {t["data"]["dgaal_id"]: t["data"]["suggested"] for t in tasks}
    assert all(t.total_predictions == 1 for t in by_pid.values())  # T's pre-selected choice
    want: dict[int, str] = {}
    for k, pid in enumerate(pids[:-1]):
        hint = suggested[pid]
        # half take the suggestion, half change it; the second-last task has two annotators
        answer = hint if k % 2 == 0 else classes[(classes.index(hint) + 1) % len(classes)]
        ls.annotations.create(id=by_pid[pid].id, result=_choice(answer))
        if k == len(pids) - 2:
            ls.annotations.create(id=by_pid[pid].id, result=_choice(answer))
        want[pid] = answer
    skipped = pids[-1]
    ls.annotations.create(id=by_pid[skipped].id, result=[], was_cancelled=True)

    formats = (("JSON", "json"), ("JSON_MIN", "json"), ("CSV", "csv"))
    exports = {k: _export(ls, project.id, k, tmp_path / f"export-{k}.{ext}") for k, ext in formats}
    with PoolReader(pool) as r:
        for kind, path in exports.items():  # the three formats say the same
            got = read_export(path, r, 1)
            assert dict(zip(got.ids.tolist(), got.labels.tolist(), strict=True)) == {
                pid: classes.index(a) for pid, a in want.items()
            }, kind

    out = dgaal("label", "--pool", str(pool), str(exports["JSON"]))
    assert "round 1: 11 answers imported; 1 skipped or not annotated; 1 still waiting" in out
    with PoolReader(pool) as r:
        for pid, answer in want.items():
            assert r.states[pid] == State.LABELLED and classes[r.labels[pid]] == answer
        assert r.states[skipped] == State.QUERIED and r.labels[skipped] == -1
        assert np.sum(r.states == State.QUERIED) == 1

    # The person comes back to the skipped image; the next export holds every answer again.
    ls.annotations.create(id=by_pid[skipped].id, result=_choice(suggested[skipped]))
    out = dgaal(
        "label", "--pool", str(pool), str(_export(ls, project.id, "CSV", tmp_path / "again.csv"))
    )
    assert "1 answer imported; 11 imported before; run `dgaal round` to finish" in out
    with PoolReader(pool) as r:
        assert r.states[skipped] == State.LABELLED and np.sum(r.states == State.QUERIED) == 0
        assert r.meta["pending_round"]["phase"] == "selected"


def _tasks_of(ls, project: int, round_no: int) -> list:
    return [t for t in ls.tasks.list(project=project) if t.data.get("dgaal_round") == round_no]


def _wait(what: str, ok, proc, log: Path, timeout: float = 240.0):
    """Poll ``ok()`` until it is truthy; fail with the backend's log when it is not in time."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dgaal serve exited ({proc.returncode}) waiting for {what}:\n"
                        f"{log.read_text()}")  # fmt: skip
        if got := ok():
            return got
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()}")


def test_serve_label_studio_runs_rounds_as_annotations_arrive(server, tmp_path):
    import signal
    import socket
    import subprocess

    import requests
    from label_studio_sdk import LabelStudio
    from pools import DGAAL, ENV

    from dgaal_core.pool.check import check_pool

    pool = tmp_path / "pools.h5"
    dgaal("pool", "create", str(pool), "--from", "digits", "--initial", "0.1", "--seed", "5")
    with PoolReader(pool) as r:
        classes, truth, pool_id = r.class_names, r.read_truth(np.arange(r.num_rows)), r.pool_id
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server.wait()
    _, token = _login(server.url)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [DGAAL, "serve", "label-studio", "--pool", str(pool), "--url", server.url,
             "--port", str(port), "--budget", "6", "--gan-steps", "4", "--task-epochs", "1",
             "--task-min-steps", "0", "--coevolve-steps", "2"],
            stdout=out, stderr=subprocess.STDOUT, env={**ENV, "LABEL_STUDIO_API_KEY": token},
        )  # fmt: skip
    try:
        ls = LabelStudio(base_url=server.url, api_key=token)

        def ours() -> list:
            return [p for p in ls.projects.list() if p.title == f"dgaal: pools.h5 ({pool_id})"]

        project = _wait("project", ours, proc, log)[0].id
        # the backend is attached only after its HTTP server is up (Label Studio checks /health)
        backends = _wait("ML backend", lambda: ls.ml.list(project=project), proc, log)
        assert [m.url for m in backends] == [f"http://127.0.0.1:{port}"]
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/health", timeout=10).json()["status"] == "UP"
        for path in ("webhook", "predict"):  # not a JSON object: refused, the backend lives on
            assert requests.post(f"{base}/{path}", data=b"[1]", timeout=10).status_code == 400
        # a task dgaal did not write, annotated, in the same project: left alone
        ls.projects.import_tasks(id=project, request=[{"data": {"image": "x", "note": "mine"}}])
        mine = next(t for t in ls.tasks.list(project=project) if t.data.get("note") == "mine")
        ls.annotations.create(id=mine.id, result=_choice(classes[0]))
        for round_no in (1, 2):
            tasks = _wait(f"round {round_no}'s tasks",
                          lambda n=round_no: _tasks_of(ls, project, n), proc, log)  # fmt: skip
            assert all(t.total_predictions == 1 for t in tasks)  # T's class pre-selected
            asked = {t.data["dgaal_id"] for t in tasks}
            with PoolReader(pool) as r:
                assert set(r.ids(State.QUERIED).tolist()) == asked
            got = requests.post(f"{base}/predict", json={"tasks": [{"data": tasks[0].data}]},
                                timeout=30).json()["results"][0]  # fmt: skip
            assert got["result"][0]["value"]["choices"] == [tasks[0].data["suggested"]]
            for t in tasks:  # a person answers them in Label Studio, one by one
                ls.annotations.create(id=t.id, result=_choice(classes[truth[t.data["dgaal_id"]]]))

            def finished(n: int = round_no) -> bool:
                with PoolReader(pool) as r:
                    return len(r.rounds()) >= n

            _wait(f"round {round_no} finished", finished, proc, log)
            with PoolReader(pool) as r:
                assert all(r.labels[i] == truth[i] for i in asked)
        _wait("round 3's tasks", lambda: _tasks_of(ls, project, 3), proc, log)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    said = log.read_text()
    assert code == 130 and said.strip().splitlines()[-1].startswith("error: interrupted by"), said
    assert "Traceback" not in said
    assert "round 1: 6 tasks imported" in said and "round 2 finished" in said
    assert all(f.status == "ok" for f in check_pool(pool))
