"""A real Label Studio server for the tests: started right after collection when a test marked
``labelstudio`` is selected (its first start migrates a fresh database, a minute of one core, which
then overlaps the tests before it), waited for by the test that uses it, stopped at the end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
USER, PASSWORD = "dgaal@example.com", "dgaal-test-pw-1"
START_TIMEOUT_S = 420  # a fresh database's migrations on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A Label Studio process in a temporary folder ``root``, which is also its local-files
    document root (the test keeps its pool there): started at once, waited for when needed."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dgaal-label-studio-"))
        data_dir = self.root / "label-studio"
        data_dir.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        self._log_fh = open(self.log, "w")  # closed in stop()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no call to pypi.org
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.root),
            # the ML backend and its webhook run on this machine (127.0.0.1), which Label
            # Studio refuses to call unless told (as the README says for a local setup)
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
        }
        self.proc = subprocess.Popen(
            [str(BIN / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--host", self.url, "--port", str(self.port), "--data-dir", str(data_dir),
             "--username", USER, "--password", PASSWORD],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: stop() ends its children too
        )  # fmt: skip

    def wait(self) -> None:
        import requests

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"label-studio exited ({self.proc.returncode}):\n{self._tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        pytest.fail(f"label-studio not up after {START_TIMEOUT_S} s:\n{self._tail()}")

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        """End the server and its children, and remove its folder."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_fh.close()
        shutil.rmtree(self.root, ignore_errors=True)


_started: Server | None = None


def start() -> Server:
    """The session's server, started on first call; stopped at exit if no test stopped it."""
    global _started
    if _started is None or _started.proc.poll() is not None:
        _started = Server()
        atexit.register(_started.stop)
    return _started
