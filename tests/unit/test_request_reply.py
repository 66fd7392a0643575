"""bus.request on memory: what the conformance cases do not cover (errors, a broken inbox,
requests made from inside a handler)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from eventbus import ConfigurationError, EventBus, Message
from eventbus import headers as h
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination, ReplyInbox
from eventbus.transports.memory import MemoryBroker, MemoryTransport


async def test_a_transport_without_a_reply_inbox_is_refused_by_name() -> None:
    class NoReplies(MemoryTransport):
        reply_inbox = None  # type: ignore[assignment]

    bus = EventBus(transport=NoReplies("memory://no-replies"))
    async with bus.publisher():
        with pytest.raises(ConfigurationError, match="NoReplies cannot receive replies"):
            await bus.request("q", 1, timeout=1)


async def test_bad_calls_fail_before_sending() -> None:
    bus = EventBus("memory://bad-requests")
    with pytest.raises(RuntimeError, match="not running"):
        await bus.request("q", 1)
    async with bus.publisher():
        with pytest.raises(ConfigurationError, match="timeout must be > 0"):
            await bus.request("q", 1, timeout=0)
        with pytest.raises(ConfigurationError, match="invalid queue name"):
            await bus.request("bad name", 1)
        with pytest.raises(ConfigurationError, match="kind must be 'queue' or 'topic'"):
            await bus.request("q", 1, kind="group")  # type: ignore[arg-type]
    assert bus.request_stats.sent == 0


class _BreaksOnce(MemoryTransport):
    """The first reply inbox fails after it started (swallowing the reply it got), as a broken
    connection would; later ones work."""

    opened = 0

    def reply_inbox(self) -> ReplyInbox:
        inner = super().reply_inbox()
        self.opened += 1
        first = self.opened == 1

        class Inbox:
            async def address(self) -> str:
                return await inner.address()

            async def run(
                self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
            ) -> None:
                if not first:
                    await inner.run(deliver, task_status=task_status)
                    return
                got = anyio.Event()
                async with anyio.create_task_group() as tg:
                    await tg.start(inner.run, lambda _reply: got.set())
                    task_status.started()
                    await got.wait()
                    raise RuntimeError("inbox broke")

        return Inbox()


async def test_a_broken_reply_inbox_does_not_stop_the_bus() -> None:
    broker = MemoryBroker()
    bus = EventBus(transport=_BreaksOnce(broker=broker))

    @bus.consume("echo")
    async def echo(n: int) -> int:
        return n

    transport = bus.transport
    assert isinstance(transport, _BreaksOnce)
    async with bus:
        # The first inbox breaks when its reply comes: that request times out...
        with pytest.raises(TimeoutError):
            await bus.request("echo", 1, timeout=0.5)
        # ... and the bus runs on: the next request opens a new inbox and gets its reply.
        assert await bus.request("echo", 2, timeout=5) == 2
        assert bus.ready and transport.opened == 2


async def test_a_handler_can_make_requests_with_a_fresh_correlation_id() -> None:
    bus = EventBus("memory://nested-requests")
    seen: dict[str, Any] = {}

    @bus.consume("inventory")
    async def stock(sku: str, message: Message) -> int:
        seen["request"] = message
        return 7

    @bus.consume("orders")
    async def order(sku: str, message: Message) -> str:
        seen["order"] = message
        left = await bus.request("inventory", sku, timeout=5)
        return f"{sku}: {left} left"

    async with bus:
        reply = await bus.request("orders", "apple", timeout=5)
    assert reply == "apple: 7 left"
    request, order_message = seen["request"], seen["order"]
    assert request.correlation_id not in (None, order_message.correlation_id)
    assert request.headers[h.CAUSATION_ID] == order_message.id


async def test_stopping_while_requests_keep_coming_ends_them_with_an_error() -> None:
    bus = EventBus("memory://stop-while-asking", graceful_timeout=1.0)

    @bus.consume("echo")
    async def echo(n: int) -> int:
        await anyio.sleep(0.01)
        return n

    answered: list[int] = []
    ended: list[BaseException] = []

    async def keep_asking() -> None:
        while True:
            try:
                answered.append(await bus.request("echo", 1, timeout=30))
            except RuntimeError as exc:  # stopping, stopped, or not running any more
                ended.append(exc)
                return

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg, bus:
            tg.start_soon(keep_asking)
            await wait_for(lambda: len(answered) >= 5, what="some replies")
    assert len(ended) == 1, "the request loop ended with an error, not a 30 s timeout"


async def test_concurrent_first_requests_share_one_inbox() -> None:
    class Counting(MemoryTransport):
        inboxes = 0

        def reply_inbox(self) -> ReplyInbox:
            self.inboxes += 1
            return super().reply_inbox()

    bus = EventBus(transport=Counting(broker=MemoryBroker()))

    @bus.consume("echo", concurrency=16)
    async def echo(n: int) -> int:
        return n

    results: list[int] = []

    async def ask(n: int) -> None:
        results.append(await bus.request("echo", n, timeout=5))

    async with bus, anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(ask, n)
    assert sorted(results) == list(range(20))
    transport = bus.transport
    assert isinstance(transport, Counting) and transport.inboxes == 1


async def test_a_reply_nobody_can_receive_is_dropped_not_retried() -> None:
    broker = MemoryBroker()
    bus = EventBus(transport=MemoryTransport(broker=broker))
    handled: list[int] = []

    @bus.consume("echo")
    async def echo(n: int) -> int:
        handled.append(n)
        return n

    async with bus:
        request = Message(
            id="r-1", topic="echo", body=b"3", reply_to="eventbus.reply.gone", correlation_id="c"
        )
        await bus.transport.publish(Destination("echo", "queue"), [request])
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1, what="handled")
    stats = bus.subscribers[0].stats
    assert handled == [3] and stats.failed_attempts == 0 and stats.dead_lettered == 0


async def test_an_expired_request_is_dropped_unanswered() -> None:
    broker = MemoryBroker()
    bus = EventBus(transport=MemoryTransport(broker=broker))
    handled: list[int] = []

    @bus.consume("echo")
    async def echo(n: int) -> int:
        handled.append(n)
        return n

    async with bus:
        request = Message(
            id="r-1",
            topic="echo",
            body=b"3",
            reply_to="replies-of-someone",
            correlation_id="c",
            headers={h.EXPIRES_AT: "1.000"},
        )
        await bus.transport.publish(Destination("echo", "queue"), [request])
        await wait_for(lambda: bus.subscribers[0].stats.expired == 1, what="expired")
    assert handled == [] and bus.subscribers[0].stats.dead_lettered == 0
    assert broker.published("replies-of-someone") == [], "nobody waits: no error reply"
    assert broker.published("echo.dlq") == []
