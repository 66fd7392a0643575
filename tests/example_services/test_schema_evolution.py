"""examples/schema_evolution run as a user runs it: ``eventbus run`` of v1 and v2 as two real
processes on real Kafka with the real registry. Each reads what the other writes: v2 sees v1's
records with the default ``carrier``, v1 sees v2's without it; and ``eventbus schema check``
of v2 against what both registered passes FULL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_v1_and_v2_read_each_others_records(
    kafka_url: str, registry_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "EVENTBUS_URL": kafka_url,
        "EVENTBUS_SCHEMA_REGISTRY": registry_url,
        "EVENTBUS_DEMO_COUNT": "4",
        "SHIPMENTS_TOPIC": f"shipments-{uuid.uuid4().hex[:8]}",
    }
    logs = {version: tmp_path / f"{version}.log" for version in ("v1", "v2")}
    processes = {}
    for version, log in logs.items():
        with log.open("wb") as out:
            processes[version] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "eventbus",
                    "run",
                    f"examples.schema_evolution.{version}:bus",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(version: str) -> str:
        return logs[version].read_text(errors="replace")

    try:
        _until(
            lambda: "read Shipment(id='v1-4', weight_kg=6.0, carrier='unknown')" in output("v2"),
            "v2 to read v1's last record, with the default carrier",
        )
        _until(
            lambda: "read Shipment(id='v2-4', weight_kg=6.0)" in output("v1"),
            "v1 to read v2's last record, without the carrier",
        )
        # Each also reads its own records as written.
        assert "read Shipment(id='v2-1', weight_kg=1.5, carrier='DHL')" in output("v2")
        assert "read Shipment(id='v1-1', weight_kg=1.5)" in output("v1")
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for process in processes.values()]
    assert codes == [0, 0], (output("v1")[-2000:], output("v2")[-2000:])

    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventbus",
            "schema",
            "check",
            "examples.schema_evolution.v2:bus",
            "--registry",
            registry_url,
            "--level",
            "FULL",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ok      {env['SHIPMENTS_TOPIC']}-value (Shipment): FULL" in check.stdout
