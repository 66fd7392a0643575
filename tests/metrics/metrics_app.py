"""A worker for the metrics tests: one handler that waits until a gate file exists.

``METRICS_APP_NAME``: the topic (group ``g``) or queue, unique per test; ``METRICS_APP_KIND``:
``topic`` or ``queue``; ``METRICS_APP_GATE``: the file whose creation lets handlers finish, so
that a test can hold a backlog and in-flight messages as long as it looks at them. The URL
comes from ``eventbus run --url``.
"""

import os
from pathlib import Path

import anyio
from metrics_harness import LIMIT

from eventbus import EventBus, Message

bus = EventBus()
NAME = os.environ["METRICS_APP_NAME"]
GATE = Path(os.environ["METRICS_APP_GATE"])


async def work(message: Message) -> None:
    # Another process creates the gate: polling is the only way to see it.
    while not GATE.exists():  # noqa: ASYNC110, ASYNC240
        await anyio.sleep(0.05)


if os.environ.get("METRICS_APP_KIND") == "queue":
    bus.consume(NAME, concurrency=LIMIT, max_in_flight=LIMIT)(work)
else:
    bus.subscribe(NAME, group="g", concurrency=LIMIT, max_in_flight=LIMIT)(work)
