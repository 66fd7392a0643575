"""``eventbus run --metrics-port``: served by the worker process itself, and refused cleanly
when the port cannot be had."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventbus", "run", "slow_app:bus", *args],
        cwd=APPS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "APP_SLEEP": "0"},
    )


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def test_one_worker_serves_its_metrics_and_probes() -> None:
    port = free_port()
    worker = run("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, text = get(port, "/metrics")
                if 'eventbus_handled_messages_total{destination="jobs"' in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no metrics served"
            time.sleep(0.1)
        assert status == 200
        assert get(port, "/readyz")[0] == 200
        assert get(port, "/livez")[0] == 200
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


def test_a_taken_port_exits_4_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = run("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 4, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err
