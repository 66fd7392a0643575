"""Helpers the outbox tests share: collecting what a relay published, waiting on it, and
running ``eventbus outbox relay`` as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from eventbus import Delivery, EventBus

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Seen:
    """What a subscriber received: (key, payload, message id), in arrival order."""

    items: list[tuple[str | None, dict[str, int], str]] = field(default_factory=list)

    def subscribe(self, bus: EventBus, topic: str, *, group: str = "check") -> None:
        @bus.subscribe(topic, group=group, concurrency=16, max_in_flight=512)
        async def record(payload: dict[str, int], delivery: Delivery) -> None:
            message = delivery.message
            self.items.append((message.key, payload, message.id))

    async def wait_for(self, count: int, within: float = 30.0) -> None:
        await eventually(lambda: len(self.items) >= count, within)

    def first_deliveries(self) -> list[tuple[str | None, dict[str, int], str]]:
        first, ids = [], set()
        for item in self.items:
            if item[2] not in ids:
                ids.add(item[2])
                first.append(item)
        return first


def order_violations(items: list[tuple[str | None, dict[str, int], str]]) -> int:
    """Per key, first deliveries whose ``seq`` is lower than one delivered before them."""
    highest: dict[str | None, int] = {}
    late = 0
    for key, payload, _ in items:
        seq = payload["seq"]
        if seq < highest.get(key, -1):
            late += 1
        highest[key] = max(seq, highest.get(key, -1))
    return late


class RelayProcess:
    """``python -m eventbus outbox relay`` with its output in a file (never an unread pipe)."""

    def __init__(self, *args: str, out: Path, env: dict[str, str]) -> None:
        self.out = out
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        with out.open("a") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "outbox", "relay", *args],
                cwd=REPO,
                env=environment,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, within: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=within)


async def eventually(check: Callable[[], object], within: float = 30.0) -> None:
    """Wait until ``check()`` is true; fails after ``within`` seconds."""
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 (polls state another task or process changes)
            await anyio.sleep(0.05)
