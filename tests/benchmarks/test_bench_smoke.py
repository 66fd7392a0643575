"""The benchmark harness cannot rot: a tiny run of every scenario and contender (`--quick`).

It checks that the command works end to end against the real brokers and that the JSON holds
every scenario and every contender with a positive throughput. It asserts no timing: numbers
from a shared CI machine mean nothing (docs/benchmarks.md has the real ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.amqp]


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quick_run_covers_every_scenario_and_contender(
    kafka_url: str, amqp_url: str, tmp_path: Path
) -> None:
    listed = _bench("--list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    expected: dict[str, list[str]] = json.loads(listed.stdout)
    assert len(expected) >= 9

    out = tmp_path / "bench.json"
    proc = _bench(
        "--quick", "--kafka", kafka_url, "--amqp", amqp_url, "--json", str(out), timeout=280
    )
    assert proc.returncode == 0, f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    results = json.loads(out.read_text())

    assert set(results["scenarios"]) == set(expected)
    for key, names in expected.items():
        scenario = results["scenarios"][key]
        assert scenario["settings"], key
        assert set(scenario["contenders"]) == set(names), key
        for name in names:
            contender = scenario["contenders"][name]
            assert "error" not in contender, (key, name, contender.get("error"))
            assert contender["msgs_per_s"] > 0, (key, name)
            assert all(r["messages"] > 0 for r in contender["rounds"]), (key, name)
        if scenario["latency"] in ("end-to-end", "round-trip"):
            assert all(c["p99_ms"] > 0 for c in scenario["contenders"].values()), key
        for target in scenario["targets"]:
            assert target["measured"] is not None, (key, target)
    assert "| contender |" in proc.stdout  # the table was printed
    assert results["machine"]["cpus"]


def test_the_codec_cost_benchmark_runs(registry_url: str) -> None:
    """`benchmarks/codec_cost.py` (docs/benchmarks.md), with few messages: it runs and reports
    all four timings (no threshold: machines are shared)."""
    env = {**os.environ, "EVENTBUS_SCHEMA_REGISTRY": registry_url, "CODEC_COST_MESSAGES": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.codec_cost"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for line in ("json encode", "json decode", "avro encode", "avro decode"):
        assert line in done.stdout
