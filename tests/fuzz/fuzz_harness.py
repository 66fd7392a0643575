"""What both fuzz suites share: one worker consuming foreign messages for every example, run in
a blocking portal's event loop so hypothesis can drive the examples from a plain (synchronous)
test, and the checks made once all examples ran."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pydantic
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

FIXED = settings(
    database=None,
    deadline=None,
    derandomize=True,  # the same examples in every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=EXAMPLES,
)


class Order(pydantic.BaseModel):
    id: int


class Worker:
    """A bus consuming one fresh queue with 8 lanes. With ``retrying`` off, no retries: what
    is not an `Order` is dead-lettered at once. With it on, orders with an odd id fail, are
    republished through the broker once (``via_broker``: the foreign headers go out and come
    back with eventbus's own beside them) and are then dead-lettered as retries exhausted."""

    def __init__(self, url: str, portal: BlockingPortal, *, retrying: bool = False) -> None:
        self.url = url
        self.portal = portal
        self.queue = f"fuzz-{uuid.uuid4().hex[:10]}"
        self.bus = EventBus(url)
        self.published = 0
        self.examples = 0
        self.retrying = retrying
        retry = RetryPolicy(max_attempts=2, initial_delay=0, jitter=False, via_broker=True)

        @self.bus.consume(
            self.queue, concurrency=8, retry=retry if retrying else RetryPolicy(max_attempts=1)
        )
        async def handle(order: Order) -> None:
            if retrying and order.id % 2:
                raise ValueError(f"odd order {order.id}")

    @property
    def handled(self) -> int:
        return self.bus.subscribers[0].stats.handled

    @property
    def dead_lettered(self) -> int:
        return self.bus.subscribers[0].stats.dead_lettered

    @property
    def retried(self) -> int:
        return self.bus.subscribers[0].stats.retried

    @property
    def settled(self) -> int:
        return self.handled + self.dead_lettered

    def run_example(self, send: Callable[[], Awaitable[int]]) -> None:
        """``send`` (in the bus's event loop) publishes one example's messages and returns how
        many the broker took; then wait until the worker settled everything so far."""

        async def run() -> None:
            self.published += await send()
            await wait_for(lambda: self.settled >= self.published, within=30, what="settled")

        self.examples += 1
        self.portal.call(run)


@contextmanager
def running_worker(
    url: str, what: str, capsys: pytest.CaptureFixture[str], *, retrying: bool = False
) -> Iterator[Worker]:
    """A running `Worker`; afterwards the counts are printed (in the test run's own output,
    passed or not) and ``eventbus dlq show`` must print every dead letter (every one readable
    by the operator's tool)."""
    with start_blocking_portal() as portal:
        worker = Worker(url, portal, retrying=retrying)
        with portal.wrap_async_context_manager(worker.bus):
            yield worker
        with capsys.disabled():
            print(
                f"\nfuzz{' (odd orders retried)' if retrying else ''}: {worker.examples} "
                f"examples, {worker.published} foreign {what}: {worker.handled} handled, "
                f"{worker.dead_lettered} dead-lettered, {worker.retried} retried"
            )
        if retrying:
            assert worker.retried, "some odd order went through the retry path"
        if worker.dead_lettered:
            shown = _dlq_show(worker)
            assert shown.count("eventbus-dlq-reason") == worker.dead_lettered, shown[-3000:]


def _dlq_show(worker: Worker) -> str:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "eventbus", "dlq", "show", f"{worker.queue}.dlq"),
            *("--url", worker.url, "--limit", str(worker.dead_lettered + 10)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
