"""The README's code runs as written: every Python block executes (in a folder holding the pool
and the round its commands name), and every ``dgaal`` command line in a shell block names a real
command with real options. A block that cannot run here says why in an HTML comment just above
it (``<!-- not run by tests/test_readme.py: ... -->``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pools import ENV, ROOT, cli

README = ROOT / "README.md"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)
NOT_RUN = "<!-- not run by tests/test_readme.py:"


def blocks(lang: str) -> list[tuple[int, str, bool]]:
    """``(line, body, runnable)`` of each block in ``lang``."""
    text = README.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m["lang"] == lang:
            line = text.count("\n", 0, m.start("body")) + 1
            out.append((line, m["body"], not m["before"].startswith(NOT_RUN)))
    return out


def test_the_readme_has_blocks_and_few_that_cannot_run() -> None:
    python = blocks("python")
    assert len(python) >= 2 and sum(not ok for *_, ok in python) <= 1
    assert len(blocks("bash")) >= 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with ``pools.h5`` (the digits) after one round, as the README's examples use."""
    here = tmp_path_factory.mktemp("readme")
    assert (
        cli("pool", "create", here / "pools.h5", "--from", "digits", "--initial", "0.1").code == 0
    )
    ran = cli("round", "--pool", here / "pools.h5", "--strategy", "dgaal-paper", "--gan-steps",
              "4", "--task-epochs", "1", "--task-min-steps", "0", "--coevolve-steps", "2",
              "--quiet", cwd=here)  # fmt: skip
    assert ran.code == 0, ran.stdout + ran.stderr
    return here


@pytest.mark.parametrize("line, body", [(n, b) for n, b, ok in blocks("python") if ok])
def test_every_python_block_runs_as_written(folder: Path, line: int, body: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", body], cwd=folder, env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"README.md:{line}:\n{proc.stderr[-3000:]}"


def _commands() -> list[tuple[int, list[str]]]:
    """Every ``dgaal ...`` command of the shell blocks, comments and ``[...]`` marks dropped."""
    out = []
    for line, body, _ in blocks("bash"):
        for k, raw in enumerate(body.replace("\\\n", " ").splitlines()):
            text = raw.split(" #")[0].replace("[", " ").replace("]", " ")
            for part in re.split(r"&&|\|\||;|\|", text):
                if not part.strip().startswith("dgaal "):
                    continue  # other tools' lines, and the pieces a ';' in a quote made
                words = shlex.split(part)
                if words and words[0] == "dgaal":
                    out.append((line + k, words[1:]))
    return out


def test_every_dgaal_command_in_the_readme_exists_with_its_options() -> None:
    import typer.main

    from cli.main import app

    root = typer.main.get_command(app)
    commands = _commands()
    assert len(commands) >= 20
    for line, words in commands:
        cmd, rest = root, list(words)
        while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
            name = rest.pop(0)
            assert name in cmd.commands, f"README.md:{line}: no command `{name}` in {words}"
            cmd = cmd.commands[name]
        if cmd is root and rest[:1] == ["--version"]:
            continue  # the app's own option
        assert not hasattr(cmd, "commands"), f"README.md:{line}: {words} names no command"
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for w in rest:
            if w.startswith("--"):
                assert w.split("=")[0] in known, (
                    f"README.md:{line}: {w} is not an option of {words}"
                )


def test_the_make_targets_the_readme_names_exist() -> None:
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    named = {w for _, body, _ in blocks("bash") for w in re.findall(r"^make (\w+)", body, re.M)}
    assert named and named <= targets, named - targets


def test_make_demo_installs_what_the_demo_needs_only() -> None:
    """The demo trains and plots: not Label Studio or Ray (a 2.9 GB environment)."""
    make = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo: (\S+)", make, re.M)
    assert demo is not None
    recipe = re.search(rf"^{re.escape(demo[1])}:.*?\n((?:\t.*\n)+)", make, re.M)
    assert recipe is not None and "'.[train,report]'" in recipe[1], recipe
