"""Reporting: the Markdown tables, and what the machine was and how busy it was."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

__all__ = ["load_average", "machine_info", "print_table"]


def print_table(results: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The results as Markdown tables (the same text goes into docs/benchmarks.md)."""
    for key, scenario in results["scenarios"].items():
        out(f"\n### {key}: {scenario['title']}\n")
        settings = ", ".join(f"{k}={v}" for k, v in scenario["settings"].items())
        out(f"Settings: {settings}\n")
        latency = scenario["latency"] != "none"
        round_trip = scenario["latency"] == "round-trip"
        quantiles = ("p50_ms", "p90_ms", "p99_ms", "max_ms") if round_trip else ("p50_ms", "p99_ms")
        unit = "req/s" if round_trip else "msg/s"
        columns = ["contender", f"{unit} (median)", "min-max", "ratio", f"CPU us/{unit[:3]}"]
        if latency:
            columns += [f"{q.removesuffix('_ms')} ms" for q in quantiles] + ["p99 by round"]
        out("| " + " | ".join(columns) + " |")
        out("|---" + "|---:" * (len(columns) - 1) + "|")
        for name, c in scenario["contenders"].items():
            if "msgs_per_s" not in c:
                blanks = " |" * (len(columns) - 2)
                out(f"| {name} | failed: {c.get('error', 'no runs')} |{blanks}")
                continue
            cells = [
                name,
                f"{c['msgs_per_s']:,.0f}",
                f"{c['min_msgs_per_s']:,.0f}-{c['max_msgs_per_s']:,.0f}",
                f"{c['ratio']:.2f}x {c['baseline']}" if "ratio" in c else "-",
                f"{c['cpu_us_per_msg']:,.0f}" if "cpu_us_per_msg" in c else "-",
            ]
            if latency:
                cells += [f"{c[q]:.2f}" if q in c else "-" for q in quantiles]
                cells.append(" / ".join(f"{r['p99_ms']:.1f}" for r in c["rounds"] if "p99_ms" in r))
            out("| " + " | ".join(cells) + " |")
        if scenario["targets"]:
            out("")
        for t in scenario["targets"]:
            got = "n/a" if t["measured"] is None else f"{t['measured']:g}"
            verdict = "met" if t["met"] else "NOT met"
            out(f"- target {t['label']}: measured {got}: {verdict}")


def machine_info() -> dict[str, Any]:
    def versions(*names: str) -> dict[str, str]:
        found = {}
        for n in names:
            try:
                found[n] = metadata.version(n)
            except metadata.PackageNotFoundError:
                found[n] = "not installed"
        return found

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "packages": versions(
            "eventbus", "aiokafka", "aio-pika", "aiormq", "faststream", "pydantic", "anyio"
        ),
        "git": _git_head(),
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _git_head() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}"
