"""A worker for the supervisor and ``--reload`` tests.

``SUP_QUEUE`` names its queue and ``SUP_HANDLED`` the file each handled job's id and the
worker's pid are appended to. A job with id ``crash`` kills the worker (``os._exit(3)``) the
first time it is seen; its redelivery is handled. ``SUP_ON_START``: ``crash`` kills every
worker soon after it started, ``fail`` makes the startup hook raise. ``SUP_SEND_BOOT=1``:
each worker sends itself a ``boot-<pid>`` job once it runs.
"""

import os
from pathlib import Path

import anyio

from eventbus import EventBus

bus = EventBus("memory://supervised-app")
QUEUE = os.environ.get("SUP_QUEUE", "supervised-jobs")
HANDLED = Path(os.environ.get("SUP_HANDLED", "handled.txt"))


@bus.consume(QUEUE)
async def work(job: dict) -> None:  # type: ignore[type-arg]
    if job["id"] == "crash":
        marker = HANDLED.with_suffix(".crashed")
        if not marker.exists():
            marker.touch()
            os._exit(3)  # a hard crash: nothing was settled, the broker delivers it again
    with HANDLED.open("a") as handled:  # noqa: ASYNC230 (a test app: one short line)
        handled.write(f"{job['id']} {os.getpid()}\n")


@bus.on_startup
async def seed() -> None:
    start = os.environ.get("SUP_ON_START", "")
    if start == "crash":
        await anyio.sleep(0.2)  # once the worker is up: a crash, not a failed startup
        os._exit(3)
    if start == "fail":
        raise ConnectionError("database is down")
    print(f"ready {os.getpid()}", flush=True)
    if os.environ.get("SUP_SEND_BOOT") == "1":
        await bus.send(QUEUE, {"id": f"boot-{os.getpid()}"})
