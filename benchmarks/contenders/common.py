"""What every contender measures the same way: consume counting, paced publishing, timing,
request-reply payloads and round trips."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from benchmarks.harness import Measurement, Run

__all__ = [
    "REQUEST_TIMEOUT",
    "STALL_SECONDS",
    "Latencies",
    "PriceReply",
    "PriceRequest",
    "Tally",
    "paced",
    "price",
    "price_request",
    "raw_price",
    "raw_request",
    "running",
    "stamp",
    "stamped_latency",
    "timed_batches",
    "timed_calls",
    "timed_requests",
]

STALL_SECONDS = 60.0
"""A consume run that gets nothing for this long (plus its time cap) failed."""


@contextlib.asynccontextmanager
async def running(loop: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run a contender's consume ``loop`` in a task for the block, then cancel and await it."""
    task = asyncio.create_task(loop)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Tally:
    """Counts handled messages and times the steady state: the window runs from the end of
    message ``expected // 10`` to the end of message ``expected - expected // 10``. Cutting
    both ends leaves out connecting, joining and assignment, and also what the client library
    prefetched before the first handler ran (aiokafka fetches up to 1 MiB per partition in the
    background) and the drain at the end, which would otherwise flatter whoever is fastest
    per message. ``done`` is set at the window's end or when the window exceeds
    ``max_seconds`` (slow contenders are measured over what they did by then)."""

    __slots__ = (
        "count",
        "cpu",
        "done",
        "expected",
        "high",
        "low",
        "max_seconds",
        "measured",
        "t0",
        "t1",
    )

    def __init__(self, expected: int, max_seconds: float) -> None:
        self.expected = expected
        self.max_seconds = max_seconds
        self.low = max(1, expected // 10)
        self.high = max(self.low + 1, expected - expected // 10)
        self.count = self.measured = 0
        self.t0 = self.t1 = self.cpu = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        """At the end of every handler call."""
        self.count += 1
        if self.count < self.low or self.done.is_set():
            return
        now = time.perf_counter()
        if self.count == self.low:
            self.t0, self.cpu = now, time.process_time()
        elif self.count >= self.high or now - self.t0 >= self.max_seconds:
            self.t1, self.cpu = now, time.process_time() - self.cpu
            self.measured = self.count - self.low
            self.done.set()

    async def wait(self, what: str) -> Measurement:
        try:
            await asyncio.wait_for(self.done.wait(), self.max_seconds + STALL_SECONDS)
        except TimeoutError:
            raise TimeoutError(
                f"{what}: stalled after {self.count} of {self.expected} messages"
            ) from None
        m = Measurement(self.measured, self.t1 - self.t0, cpu=self.cpu)
        m.extra["prefilled"] = self.expected
        if self.measured < self.high - self.low:
            m.extra["capped_at_seconds"] = self.max_seconds
        return m


async def timed_calls(
    count: int, call: Callable[[], Awaitable[object]], *, per_call: bool
) -> Measurement:
    """``count`` awaited calls in turn; with ``per_call`` each call's latency is kept."""
    latencies: list[float] = []
    clock = time.perf_counter
    cpu = time.process_time()
    started = clock()
    if per_call:
        for _ in range(count):
            t = clock()
            await call()
            latencies.append(clock() - t)
    else:
        for _ in range(count):
            await call()
    elapsed = clock() - started
    return Measurement(count, elapsed, latencies, cpu=time.process_time() - cpu)


async def timed_batches(
    count: int, batch_size: int, send: Callable[[int], Awaitable[object]]
) -> Measurement:
    """``count`` messages as awaited batches of ``batch_size`` (``send(n)`` sends ``n``)."""
    cpu = time.process_time()
    started = time.perf_counter()
    left = count
    while left > 0:
        size = min(left, batch_size)
        await send(size)
        left -= size
    elapsed = time.perf_counter() - started
    return Measurement(count, elapsed, cpu=time.process_time() - cpu)


# -- latency at a fixed rate ----------------------------------------------------------------

_STAMP = 20


def stamp(size: int) -> bytes:
    """A body of ``size`` bytes starting with the send time (perf_counter_ns, same process)."""
    return str(time.perf_counter_ns()).zfill(_STAMP).encode().ljust(size, b".")


def stamped_latency(body: bytes) -> float:
    """Seconds since `stamp` made ``body``."""
    return (time.perf_counter_ns() - int(body[:_STAMP])) / 1e9


class Latencies:
    """Collects end-to-end latencies of a paced run; the primer messages are not counted."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.samples: list[float] = []
        self.primed = asyncio.Event()
        self.done = asyncio.Event()

    def record(self, body: bytes) -> None:
        if body.startswith(b"primer"):
            self.primed.set()
            return
        self.samples.append(stamped_latency(body))
        if len(self.samples) >= self.expected:
            self.done.set()


async def paced(
    run: Run,
    publish: Callable[[bytes], Awaitable[object]],
    latencies: Latencies,
) -> Measurement:
    """Prime (publish until the consumer got one: it is live), then publish ``expected``
    messages at ``latency_rate`` per second on an absolute schedule, each in its own task (a
    slow confirm must not delay the next send), and wait until all were handled."""
    settings = run.settings
    size = settings.message_size
    for _ in range(200):
        await publish(b"primer".ljust(size, b"."))
        try:
            await asyncio.wait_for(latencies.primed.wait(), 0.1)
            break
        except TimeoutError:
            continue
    else:
        raise TimeoutError("the consumer never received the primer messages")
    await asyncio.sleep(0.2)  # let primer stragglers arrive before the clock starts

    interval = 1.0 / settings.latency_rate
    cpu = time.process_time()
    loop = asyncio.get_running_loop()
    started = loop.time()
    errors: list[BaseException] = []

    async def send(body: bytes) -> None:
        try:
            await publish(body)
        except Exception as exc:
            errors.append(exc)

    async with asyncio.TaskGroup() as tg:
        for i in range(latencies.expected):
            delay = started + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(send(stamp(size)))
    sent_in = loop.time() - started
    if errors:
        raise errors[0]
    try:
        await asyncio.wait_for(latencies.done.wait(), STALL_SECONDS)
    except TimeoutError:
        raise TimeoutError(
            f"received {len(latencies.samples)} of {latencies.expected} paced messages"
        ) from None
    m = Measurement(
        len(latencies.samples), sent_in, latencies.samples, cpu=time.process_time() - cpu
    )
    m.extra["achieved_rate"] = round(len(latencies.samples) / sent_in, 1)
    return m


# -- request-reply ---------------------------------------------------------------------------

REQUEST_TIMEOUT = 30.0
"""Every contender's request timeout: long enough for the first request of a run, which waits
for the responder's group join (and, on Kafka, eventbus's reply-partition lease)."""

REQUEST_WARM = 20
"""Requests before the clock starts: joins, leases, declarations and first-use caches."""


class PriceRequest(BaseModel):
    """The request of scenario (i): about 50 bytes of JSON."""

    order_id: int
    sku: str
    quantity: int


class PriceReply(BaseModel):
    """The reply of scenario (i): about 50 bytes of JSON."""

    order_id: int
    total: float
    currency: str


def price_request(i: int) -> PriceRequest:
    return PriceRequest(order_id=i, sku="SKU-1234-XL", quantity=3)


def price(request: PriceRequest) -> PriceReply:
    """What every responder computes (the framework ones as a typed handler)."""
    return PriceReply(order_id=request.order_id, total=request.quantity * 19.99, currency="EUR")


def raw_request(i: int) -> bytes:
    """`price_request` by hand, with the standard library's JSON."""
    return json.dumps({"order_id": i, "sku": "SKU-1234-XL", "quantity": 3}).encode()


def raw_price(body: bytes) -> bytes:
    """`price` by hand, with the standard library's JSON: the raw clients' responder."""
    request = json.loads(body)
    reply = {"order_id": request["order_id"], "total": request["quantity"] * 19.99}
    reply["currency"] = "EUR"
    return json.dumps(reply).encode()


async def timed_requests(
    run: Run, request: Callable[[int], Awaitable[int]], in_flight: int
) -> Measurement:
    """``run.messages`` requests, ``in_flight`` at a time (each caller waits for its reply
    before its next request), after `REQUEST_WARM` sequential ones. ``request(i)`` sends
    request ``i`` and returns the ``order_id`` of its reply, checked here. Latencies are per
    request, call to reply decoded; the rate is requests per second."""
    for i in range(REQUEST_WARM):
        if await request(i) != i:
            raise AssertionError(f"warm-up request {i} got the reply to another request")
    latencies: list[float] = []
    clock = time.perf_counter
    count = run.messages
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < count:
            i = issued
            issued += 1
            t = clock()
            answer = await request(i)
            latencies.append(clock() - t)
            if answer != i:
                raise AssertionError(f"request {i} got the reply to request {answer}")

    cpu = time.process_time()
    started = clock()
    if in_flight == 1:
        await caller()
    else:
        async with asyncio.TaskGroup() as tg:
            for _ in range(in_flight):
                tg.create_task(caller())
    elapsed = clock() - started
    m = Measurement(count, elapsed, latencies, cpu=time.process_time() - cpu)
    m.extra["in_flight"] = in_flight
    return m
