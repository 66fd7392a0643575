"""eventbus 0.1 in a virtualenv of its own, built from the repository's history.

`build_old_release` extracts release 0.1 (`RELEASE_0_1`) with `git archive` from the repository
that holds this file, and installs the 0.1 core and its Kafka and RabbitMQ adapters with
``uv venv`` + ``uv pip install``. The third-party dependencies are pinned to the release's own
``uv.lock`` (exported as constraints), so the old worker runs what 0.1 was tested with. With a
warm uv cache this takes a few seconds.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["RELEASE_0_1", "OldRelease", "build_old_release"]

RELEASE_0_1 = "f10e750"
"""The commit of release 0.1 (CHANGELOG.md)."""
PATHS = ["pyproject.toml", "README.md", "uv.lock", "src", "adapters"]
"""What of the release the old venv is built from."""
BUILD_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class OldRelease:
    """A built eventbus 0.1 environment."""

    python: Path
    version: str
    commit: str
    build_seconds: float


def _run(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` took over {BUILD_TIMEOUT:.0f}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` exited with {done.returncode}:\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def _uv() -> str:
    """The uv binary: the one running this session (``uv run`` exports ``UV``), else PATH."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        pytest.fail(
            "the rolling-upgrade tests build an eventbus 0.1 virtualenv with uv, and no uv was "
            "found (run the tests with `uv run pytest`, or `source scripts/uv-bootstrap`)",
            pytrace=False,
        )
    return uv


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent
    return Path(_run(["git", "-C", str(here), "rev-parse", "--show-toplevel"]).strip())


def _extract_release(repo: Path, into: Path) -> str:
    """`git archive` the release into ``into``; returns the full commit id."""
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{RELEASE_0_1}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.fail(
            f"release 0.1 (commit {RELEASE_0_1}) is not in the repository at {repo}; the "
            "rolling-upgrade tests build the old worker from it: use a full clone "
            "(CI: fetch-depth: 0, or `git fetch --unshallow`)",
            pytrace=False,
        )
    commit = found.stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, *PATHS],
        capture_output=True,
        check=False,
        timeout=BUILD_TIMEOUT,
    )
    if archive.returncode != 0:
        pytest.fail(f"git archive {commit} failed: {archive.stderr.decode()}", pytrace=False)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(into, filter="data")
        else:  # our own commit's files, from git
            tar.extractall(into)
    return commit


def build_old_release(base: Path) -> OldRelease:
    """Build the 0.1 virtualenv under ``base`` (see the module docstring)."""
    started = time.monotonic()
    uv = _uv()
    source, venv = base / "source", base / "venv"
    commit = _extract_release(_repo_root(), source)
    # uv must not pick up this session's project or environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_PROJECT", "VIRTUAL_ENV"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    constraints = base / "constraints.txt"
    _run(
        [
            uv,
            "export",
            "--frozen",
            "--no-dev",
            "--all-packages",
            "--no-emit-workspace",
            "--no-hashes",
            "--no-header",
            "--output-file",
            str(constraints),
        ],
        cwd=source,
        env=env,
    )
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env)
    python = venv / "bin" / "python"
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--constraint",
            str(constraints),
            # Installed, not linked: the workspace sources would make the packages editable.
            "--no-sources",
            str(source),
            str(source / "adapters" / "kafka"),
            str(source / "adapters" / "rabbitmq"),
        ],
        env=env,
    )
    # The old worker must import the old code, from its venv, never this checkout's src/.
    probe = (
        "import eventbus, eventbus_kafka, eventbus_rabbitmq; "
        "print(eventbus.__version__); print(eventbus.__file__)"
    )
    version, location = _run([str(python), "-I", "-c", probe], cwd=base).splitlines()
    if not Path(location).resolve().is_relative_to(venv.resolve()):
        pytest.fail(f"the 0.1 venv imports eventbus from {location}", pytrace=False)
    return OldRelease(python, version, commit, time.monotonic() - started)
