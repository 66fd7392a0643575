"""Running ``eventbus run --workers N --metrics-port P`` on metrics_app.py and scraping it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
LIMIT = 5
"""max_in_flight (and concurrency) of metrics_app's handler."""
Samples = list[tuple[str, dict[str, str], float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MetricsWorkers:
    """The parent process and its endpoints."""

    def __init__(self, url: str, name: str, kind: str, gate: Path, workers: int = 2) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "METRICS_APP_NAME": name,
            "METRICS_APP_KIND": kind,
            "METRICS_APP_GATE": str(gate),
        }
        command = [sys.executable, "-m", "eventbus", "run", "metrics_app:bus", "--url", url]
        command += ["--workers", str(workers), "--metrics-port", str(self.port)]
        command += ["--metrics-host", "127.0.0.1", "--backlog-interval", "0.5"]
        command += ["--graceful-timeout", "10"]
        # Output to a file, not a pipe nobody reads while the test runs: a broker outage makes
        # the workers log a lot, and a full pipe would block their event loops on write.
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed by stop()
        self.proc = subprocess.Popen(
            command, cwd=HERE, env=env, stdout=self.output, stderr=subprocess.STDOUT
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""  # not listening (yet)

    def scrape(self) -> Samples:
        status, text = self.get("/metrics")
        assert status == 200, status
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, ls, v in self.scrape() if n == name and labels.items() <= ls.items())

    def stop(self) -> tuple[int, str]:
        """SIGTERM and wait: the exit code and the output (stdout and stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output.seek(0)
        output = self.output.read().decode(errors="replace")
        self.output.close()
        return self.proc.returncode, output


def eventually(check: Callable[[], bool], within: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(every)
