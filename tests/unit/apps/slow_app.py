"""A worker for the CLI tests: one slow handler and a startup hook that feeds it one message.

``APP_SLEEP`` sets how long the handler works (seconds); it prints when it starts and finishes.
"""

import os

import anyio

from eventbus import EventBus

bus = EventBus("memory://cli-slow-app")


def say(text: str) -> None:
    print(text, flush=True)


@bus.subscribe("jobs", group="workers")
async def work(job: dict) -> None:  # type: ignore[type-arg]
    say(f"started {job['id']}")
    await anyio.sleep(float(os.environ.get("APP_SLEEP", "2")))
    say(f"finished {job['id']}")


@bus.on_startup
async def produce() -> None:
    await bus.publish("jobs", {"id": 1})


not_a_bus = "just a string"
