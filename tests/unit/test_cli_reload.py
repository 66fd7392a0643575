"""``eventbus run --reload``: a changed .py file restarts the worker (after its drain), a
broken edit waits for the next one, and the option's preconditions are checked up front."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import Parent

from eventbus.cli import main

APPS = Path(__file__).parent / "apps"
READY = re.compile(r"^ready (\d+)$", re.MULTILINE)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Path, list[Parent]]]:
    """A copy of the app in a directory of its own: the test edits it, and it is watched."""
    directory = tmp_path / "app"
    directory.mkdir()
    shutil.copy(APPS / "supervised_app.py", directory / "supervised_app.py")
    parents: list[Parent] = []
    yield directory, parents
    for parent in parents:
        parent.kill()


def booted(directory: Path) -> list[str]:
    """Pids of the workers whose ``boot-<pid>`` job was handled (by that same worker)."""
    path = directory / "handled.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [pid for job, pid in (line.split() for line in lines) if job == f"boot-{pid}"]


def test_a_changed_file_restarts_the_worker(app: tuple[Path, list[Parent]]) -> None:
    directory, parents = app
    env = {"SUP_SEND_BOOT": "1", "SUP_HANDLED": str(directory / "handled.txt")}
    parent = Parent("supervised_app", "--reload", cwd=directory, out=directory / "out.log", env=env)
    parents.append(parent)
    parent.wait_until("the first worker handles", lambda: len(booted(directory)) == 1)
    parent.wait_until("watching", lambda: "watching" in parent.text)
    first = booted(directory)[0]

    with (directory / "supervised_app.py").open("a") as source:
        source.write("\n# edited\n")
    parent.wait_until("a second worker handles", lambda: len(booted(directory)) == 2, within=60)
    second = booted(directory)[1]
    assert second != first
    assert "supervised_app.py changed: restarting the worker" in parent.text
    assert READY.findall(parent.text) == [first, second]
    assert parent.stop() == 0, parent.text


def test_a_broken_edit_waits_for_the_fix(app: tuple[Path, list[Parent]]) -> None:
    directory, parents = app
    env = {"SUP_SEND_BOOT": "1", "SUP_HANDLED": str(directory / "handled.txt")}
    source = directory / "supervised_app.py"
    good = source.read_text()
    source.write_text(good + "\nthis is not python\n")
    parent = Parent("supervised_app", "--reload", cwd=directory, out=directory / "out.log", env=env)
    parents.append(parent)
    parent.wait_until("the broken app reported", lambda: "waiting for a file change" in parent.text)
    assert "cannot import 'supervised_app'" in parent.text
    assert parent.proc.poll() is None, "the parent keeps watching"

    source.write_text(good)
    parent.wait_until("the fixed app handles", lambda: len(booted(directory)) == 1)
    assert parent.stop() == 0, parent.text


def test_reload_runs_one_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["run", "supervised_app", "--reload", "--workers", "2"])
    assert caught.value.code == 2
    assert "--reload runs one worker" in capsys.readouterr().err


def test_reload_without_watchfiles_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles -> ImportError
    with pytest.raises(SystemExit) as caught:
        main(["run", "supervised_app", "--reload"])
    assert caught.value.code == 4
    err = capsys.readouterr().err
    assert err.strip() == (
        "eventbus: error: --reload needs watchfiles: pip install 'eventbus[reload]'"
    )
