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
from eventbus.transports.base import ReplyInbox
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
    assert bus.request_stats.sent == 0


class _BreaksOnce(MemoryTransport):
    """The first reply inbox fails after it started, as a broken connection would."""

    broken = 0

    def reply_inbox(self) -> ReplyInbox:
        inner = super().reply_inbox()
        transport = self

        class Inbox:
            async def address(self) -> str:
                return await inner.address()

            async def run(
                self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
            ) -> None:
                if transport.broken:
                    await inner.run(deliver, task_status=task_status)
                    return
                transport.broken += 1

                def fail(message: Message) -> None:
                    raise RuntimeError("inbox broke")

                async with anyio.create_task_group() as tg:
                    await tg.start(inner.run, fail)

        return Inbox()


async def test_a_broken_reply_inbox_does_not_stop_the_bus() -> None:
    broker = MemoryBroker()
    bus = EventBus(transport=_BreaksOnce(broker=broker))

    @bus.consume("echo")
    async def echo(n: int) -> int:
        return n

    async with bus:
        # The first inbox raises when its reply comes: that request times out...
        with pytest.raises(TimeoutError):
            await bus.request("echo", 1, timeout=0.5)
        # ... and the bus runs on: the next request opens a new inbox and gets its reply.
        assert await bus.request("echo", 2, timeout=5) == 2
        assert bus.ready


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
