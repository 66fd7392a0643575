"""``python -m eventbus run ...`` in a real process for the supervisor and reload tests.

Its output (and its workers', which inherit it) goes to a file, never to a pipe nobody reads:
the Kafka and RabbitMQ clients log a lot, and a full pipe would block the workers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


class Parent:
    def __init__(self, *args: str, cwd: Path, out: Path, env: dict[str, str]) -> None:
        self.out = out
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        environment.pop("EVENTBUS_URL", None)
        with out.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "run", *args],
                cwd=cwd,
                env=environment,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no stray terminal signal reaches it
            )

    @property
    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def started(self) -> list[tuple[int, int]]:
        """(worker number, pid) of every worker the supervisor started, in order."""
        return [(int(n), int(pid)) for n, pid in STARTED.findall(self.text)]

    def wait_until(self, what: str, check: Callable[[], object], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {within}s; output:\n{self.text}")
            time.sleep(0.1)

    def stop(self, within: float = 60.0) -> int:
        """SIGTERM, as a service manager stops it; its exit code once everything drained."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=within)

    def kill(self) -> None:
        """After a failed test: nothing may outlive it (workers have sessions of their own)."""
        try:
            self.stop(within=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for _, pid in self.started():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
