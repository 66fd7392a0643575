"""A worker process for the reliability tests: ``python partition_worker.py URL TOPIC GROUP OUT``.

Handles ``TOPIC`` as group ``GROUP`` with an EventBus (concurrency 8) and appends one line per
handled message to ``OUT``: ``key, seq, start, end`` (wall-clock seconds, one machine). Prints
``ready`` once subscribed; exits gracefully on SIGTERM.
"""

import signal
import sys
import time

import anyio

from eventbus import EventBus, Message


async def main(url: str, topic: str, group: str, out: str) -> None:
    bus = EventBus(url)

    with open(out, "a", buffering=1) as log:  # noqa: ASYNC230 - tiny line writes, test helper

        @bus.subscribe(topic, group=group, concurrency=8)
        async def handle(message: Message) -> None:
            start = time.time()
            await anyio.sleep(0.002)
            log.write(f"{message.key}\t{message.body.decode()}\t{start}\t{time.time()}\n")

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with bus:
                print("ready", flush=True)
                async for _ in signals:
                    break


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
