"""docs/tutorial.md is run, block by block, as a reader would follow it: so it cannot rot.

Every ``python`` and ``bash`` block is preceded by an HTML comment saying what to do with it:

- ``<!-- tutorial: write NAME -->``: the block is the file NAME (in a fresh directory);
- ``<!-- tutorial: run -->``: run the bash block; it must exit 0. ``run, expect "TEXT"``: its
  output must also contain TEXT (each ``expect`` is checked);
- ``<!-- tutorial: start "TEXT" -->``: start the bash block in the background and wait until
  its output shows TEXT; at the end it gets SIGTERM and must exit 0;
- ``<!-- tutorial: skip: WHY -->``: not run, for the reason given (installing a release).

A fenced block (other than ``text``) without such a comment fails the test. Shell blocks run
with ``EVENTBUS_URL`` set to the test RabbitMQ (the tutorial's ``export`` line names the same
default address).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
_STEP = re.compile(
    r"<!-- tutorial: (?P<action>write|run|start|skip)(?P<args>[^>]*)-->\s*\n```(?P<lang>\w+)\n"
    r"(?P<code>.*?)\n```",
    re.S,
)
_BLOCK = re.compile(r"^```(?!text)\w+\n", re.M)


def test_every_code_block_is_run() -> None:
    text = TUTORIAL.read_text()
    steps = len(_STEP.findall(text))
    assert steps == len(_BLOCK.findall(text)), "a python/bash block has no tutorial: comment"
    assert steps >= 9


def test_the_tutorial_runs(tmp_path: Path, amqp_url: str) -> None:
    env = {
        **os.environ,
        "EVENTBUS_URL": amqp_url,
        "PYTHONPATH": str(tmp_path),
        # The reader's `eventbus` and `python`: this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    background: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for n, step in enumerate(_STEP.finditer(TUTORIAL.read_text())):
            action, args, code = step["action"], step["args"].strip(), step["code"]
            log = tmp_path / f"step-{n}.log"
            if action == "skip":
                assert args.startswith(":") and len(args) > 10, "say why a block is skipped"
            elif action == "write":
                (tmp_path / args).write_text(code + "\n")
            elif action == "run":
                result = subprocess.run(
                    ["bash", "-e", "-c", code],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
                out = result.stdout.decode(errors="replace")
                assert result.returncode == 0, f"step {n} failed:\n{code}\n{out}"
                for expected in re.findall(r'expect "([^"]*)"', args):
                    assert expected in out, f"step {n}: {expected!r} not in:\n{out}"
            else:
                (wanted,) = shlex.split(args)
                *setup, command = code.splitlines()  # the last line is the long-running one
                script = "\n".join([*setup, f"exec {command}"])
                with log.open("wb") as sink:
                    child = subprocess.Popen(
                        ["bash", "-e", "-c", script],
                        cwd=tmp_path,
                        env=env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                background.append((child, log))
                _wait_for(log, wanted, child)
    finally:
        for child, _ in background:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = [(child.wait(timeout=60), log) for child, log in background]
    for code, log in codes:
        assert code == 0, log.read_text(errors="replace")


def _wait_for(log: Path, wanted: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while wanted not in log.read_text(errors="replace"):
        assert child.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"{wanted!r} not seen:\n{log.read_text()}"
        time.sleep(0.1)
