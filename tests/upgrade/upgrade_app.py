"""The worker app of the rolling-upgrade tests, run by eventbus 0.1 *and* 0.2 workers::

    UPG_TOPIC=t UPG_GROUP=g UPG_LEDGER=/tmp/w0.jsonl UPG_LABEL=0.1 \\
        python -m eventbus run upgrade_app:bus --url kafka://127.0.0.1:9092

So it uses only the API both releases have: `EventBus`, ``@bus.subscribe(topic, group=...,
concurrency=..., retry=RetryPolicy(...))``, `Reject`, `Delivery.attempt`, ``bus.on_startup``
and ``eventbus run``. Nothing from the test suite is imported: the 0.1 venv has none of it.

Two groups subscribe to ``UPG_TOPIC``, with the same handler and different retry policies:

- ``<UPG_GROUP>-broker``: ``via_broker=True``. A failed attempt is republished to the group's
  delayed-retry destination with the next attempt number, so a message failed by one worker
  version is retried by whichever worker reads the retry destination: attempts cross versions.
- ``<UPG_GROUP>-local``: in-process retries (the key lane waits), so per-key order holds for
  every key, failing ones included.

Each message says how it behaves (`Job`): ``fail`` attempts raise before one succeeds (``-1``:
every attempt raises, so the retries run out), ``reject`` raises `Reject` (dead letter at once).
Every attempt appends one JSON line to ``UPG_LEDGER`` (one file per worker process) before the
handler returns, so before its message is settled.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import anyio
from pydantic import BaseModel

import eventbus
from eventbus import Delivery, EventBus, Reject, RetryPolicy

__all__ = ["GROUPS", "RETRIES", "Job", "build_bus"]

MAX_ATTEMPTS = 3
RETRIES = {
    # A fixed delay, long enough that retries are always waiting in the broker when the
    # group rebalances (and so move to a worker of the other version), short for the test.
    "broker": RetryPolicy(
        max_attempts=MAX_ATTEMPTS, initial_delay=1.5, max_delay=1.5, jitter=False, via_broker=True
    ),
    "local": RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.02, max_delay=0.1),
}
GROUPS = tuple(RETRIES)


class Job(BaseModel):
    run: str
    key: str
    seq: int
    fail: int = 0
    reject: bool = False


class PlannedFailure(Exception):
    """Raised by design: the message's plan says this attempt fails."""


class _Ledger:
    def __init__(self, path: str, label: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self._fixed = {"v": label, "ver": eventbus.__version__, "pid": os.getpid()}

    def write(self, **fields: Any) -> None:
        self._file.write(json.dumps({**self._fixed, **fields}, separators=(",", ":")) + "\n")


def build_bus(env: dict[str, str] | os._Environ[str] = os.environ) -> EventBus:
    topic, group = env["UPG_TOPIC"], env["UPG_GROUP"]
    concurrency = int(env.get("UPG_CONCURRENCY", "4"))
    handler_ms = float(env.get("UPG_HANDLER_MS", "5"))
    ready_file = env.get("UPG_READY_FILE")
    ledger = _Ledger(env["UPG_LEDGER"], env.get("UPG_LABEL", eventbus.__version__))
    bus = EventBus(graceful_timeout=10.0)  # the URL comes from `eventbus run --url`

    def handler(name: str) -> Any:
        async def handle(job: Job, delivery: Delivery) -> None:
            started = time.time()
            outcome = "cancelled"  # unless the attempt gets further
            try:
                await asyncio.sleep(random.uniform(0.0, handler_ms) / 1000.0)
                if job.reject:
                    outcome = "reject"
                    raise Reject("rejected by design")
                if job.fail < 0 or delivery.attempt <= job.fail:
                    outcome = "fail"
                    raise PlannedFailure(f"attempt {delivery.attempt} fails by design")
                outcome = "ok"
            finally:
                headers = delivery.message.headers
                ledger.write(
                    group=name,
                    id=delivery.message.id,
                    key=job.key,
                    seq=job.seq,
                    attempt=delivery.attempt,
                    outcome=outcome,
                    start=started,
                    end=time.time(),
                    # eventbus headers the handler can see (the attempt count is in `attempt`)
                    hdrs=sorted(
                        k for k in headers if k.startswith("eventbus-") and k != "eventbus-attempt"
                    ),
                )

        handle.__name__ = handle.__qualname__ = f"handle_{name}"  # for the logs
        return handle

    for name, policy in RETRIES.items():
        bus.subscribe(topic, group=f"{group}-{name}", concurrency=concurrency, retry=policy)(
            handler(name)
        )

    @bus.on_startup
    async def ready() -> None:
        # Runs once every subscription is live (group joined): the test waits for this file.
        if ready_file:
            await anyio.Path(ready_file).write_text(str(os.getpid()))

    return bus


_bus: EventBus | None = None


def __getattr__(name: str) -> Any:
    # `eventbus run upgrade_app:bus` asks for ``bus``: built from the environment on first
    # access, so importing this module needs no configuration.
    global _bus
    if name == "bus":
        if _bus is None:
            _bus = build_bus()
        return _bus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
