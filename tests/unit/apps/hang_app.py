"""A worker for the CLI signal tests: a synchronous handler that never returns by itself.

``HANG_URL`` picks the broker (memory by default); it prints "started" once the handler runs.
"""

import os
import time

from eventbus import EventBus

bus = EventBus(os.environ.get("HANG_URL", "memory://cli-hang-app"))
QUEUE = os.environ.get("HANG_QUEUE", "hang-jobs")


@bus.consume(QUEUE)
def work(job: dict) -> None:  # type: ignore[type-arg]
    print(f"started {job['id']}", flush=True)
    time.sleep(3600)  # a blocking call that cannot be interrupted


@bus.on_startup
async def produce() -> None:
    if os.environ.get("HANG_PUBLISH", "1") == "1":
        await bus.send(QUEUE, {"id": 1})
