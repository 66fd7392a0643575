"""Request-reply cases of the conformance suite (DESIGN 12), for transports with a reply inbox.

Subclass `RequestReplySuite` like `eventbus.testing.conformance.ConformanceSuite`, overriding
``bus_url``. A requester and its responders are separate buses on the same broker, as separate
services would be; every case uses fresh names.
"""

from collections.abc import Callable
from typing import Any

import anyio
import pydantic
import pytest

from eventbus import (
    EventBus,
    Message,
    RequestTimeoutError,
    ResponderError,
    RetryPolicy,
)
from eventbus.testing.conformance import BusFixtures, wait_for

__all__ = ["RequestReplySuite"]

pytestmark = pytest.mark.timeout(300)


class Quote(pydantic.BaseModel):
    sku: str
    qty: int


class Price(pydantic.BaseModel):
    sku: str
    total: int


_ONCE = RetryPolicy(max_attempts=1)


class RequestReplySuite(BusFixtures):
    """Subclass and override ``bus_url``."""

    name_prefix = "rr"
    join_time = 30.0
    """Seconds a responder may take to receive its first request (a Kafka group join)."""

    async def _warm_up(self, requester: EventBus, queue: str, payload: object) -> None:
        """One request answered end to end: the responder is live and the inbox leased."""
        await requester.request(queue, payload, timeout=self.join_time)

    async def test_concurrent_requests_each_get_their_own_reply(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        responder, requester, queue = make_bus(), make_bus(), name("price")
        seen_correlation: set[str] = set()

        @responder.consume(queue, concurrency=8)
        async def price(quote: Quote, message: Message) -> Price:
            assert message.reply_to is not None and message.correlation_id is not None
            seen_correlation.add(message.correlation_id)
            await anyio.sleep(0.01 * (quote.qty % 5))  # replies come back out of order
            return Price(sku=quote.sku, total=quote.qty * 3)

        async with responder, requester.publisher():
            await self._warm_up(requester, queue, Quote(sku="warm", qty=1))
            results: dict[int, Price] = {}

            async def ask(i: int) -> None:
                results[i] = await requester.request(
                    queue, Quote(sku=f"s{i}", qty=i), response=Price, timeout=20.0
                )

            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(ask, i)
        assert results == {i: Price(sku=f"s{i}", total=i * 3) for i in range(60)}
        assert len(seen_correlation) == 61  # a fresh correlation id per request
        stats = requester.request_stats
        assert (stats.sent, stats.replied, stats.failed, stats.timed_out) == (61, 61, 0, 0)

    async def test_a_handler_returning_none_answers_none(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        responder, requester, queue = make_bus(), make_bus(), name("none")
        done: list[str] = []

        @responder.consume(queue)
        async def archive(order_id: str) -> None:
            done.append(order_id)

        async with responder, requester.publisher():
            reply = await requester.request(queue, "o-1", timeout=self.join_time)
        assert reply is None and done == ["o-1"]

    async def test_timeout_raises_and_the_late_reply_is_dropped_and_counted(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        responder, requester, queue = make_bus(), make_bus(), name("slow")
        release = anyio.Event()
        handled: list[int] = []

        @responder.consume(queue)
        async def slow(n: int) -> int:
            if n == 1:
                await release.wait()
            handled.append(n)
            return n

        async with responder, requester.publisher():
            await self._warm_up(requester, queue, 0)
            started = anyio.current_time()
            with pytest.raises(RequestTimeoutError) as raised:
                await requester.request(queue, 1, timeout=0.5)
            waited = anyio.current_time() - started
            assert isinstance(raised.value, TimeoutError)
            assert raised.value.name == queue and raised.value.timeout == 0.5
            assert 0.5 <= waited < 5.0
            release.set()
            await wait_for(lambda: handled == [0, 1], within=20, what="the slow request handled")
            await wait_for(lambda: requester.request_stats.late == 1, within=20, what="late")
            # The inbox goes on: a new request is answered.
            assert await requester.request(queue, 2, timeout=self.join_time) == 2
        stats = requester.request_stats
        assert (stats.sent, stats.replied, stats.timed_out, stats.late) == (3, 2, 1, 1)

    async def test_a_failing_responder_raises_its_error_type_and_message(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        responder, requester, queue = make_bus(), make_bus(), name("fail")

        @responder.consume(queue, retry=_ONCE)
        async def charge(quote: Quote) -> Price:
            if quote.qty < 0:
                raise ValueError(f"negative quantity {quote.qty}")
            return Price(sku=quote.sku, total=quote.qty)

        async with responder, requester.publisher():
            await self._warm_up(requester, queue, Quote(sku="w", qty=1))
            with pytest.raises(ResponderError) as raised:
                await requester.request(queue, Quote(sku="x", qty=-2), response=Price, timeout=20)
            # An undecodable request is answered too, at once, without retries.
            with pytest.raises(ResponderError) as undecodable:
                await requester.request(queue, {"sku": "x"}, response=Price, timeout=20)
            await wait_for(
                lambda: responder.subscribers[0].stats.dead_lettered == 2, what="dead letters"
            )
        error = raised.value
        assert not isinstance(error, TimeoutError)
        assert (error.error_type, error.error_message) == ("ValueError", "negative quantity -2")
        assert error.reason == "retries-exhausted" and error.name == queue
        assert undecodable.value.reason == "undecodable"
        assert undecodable.value.error_type == "DecodeError"
        assert requester.request_stats.failed == 2

    async def test_topic_request_first_reply_wins_others_counted(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("census")
        responders = [make_bus(), make_bus()]
        requester = make_bus()

        def answering(index: int) -> Callable[[str], Any]:
            async def answer(question: str) -> str:
                await anyio.sleep(1.0 * index)  # group 0 answers first
                return f"{question} from {index}"

            return answer

        for index, responder in enumerate(responders):
            responder.subscribe(topic, group=name(f"g{index}"))(answering(index))

        async with responders[0], responders[1], requester.publisher():
            first = await requester.request(topic, "ready?", kind="topic", timeout=self.join_time)
            assert first in ("ready? from 0", "ready? from 1")
            await wait_for(lambda: requester.request_stats.late >= 1, within=20, what="2nd")
            second = await requester.request(topic, "count", kind="topic", timeout=20)
            assert second == "count from 0"
            await wait_for(lambda: requester.request_stats.late == 2, within=20, what="2nd")
        assert requester.request_stats.replied == 2

    async def test_responder_restarted_mid_request_still_answers(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        queue = name("restart")
        first_bus = make_bus(graceful_timeout=0.2)
        second_bus = make_bus()
        requester = make_bus()
        entered = anyio.Event()
        answered_by: list[str] = []

        @first_bus.consume(queue)
        async def stuck(n: int) -> int:
            if n == 1:
                entered.set()
                await anyio.sleep_forever()  # cancelled by the stop: redelivered, not acked
            return n

        @second_bus.consume(queue)
        async def healthy(n: int) -> int:
            answered_by.append("second")
            return n * 10

        reply: list[int] = []
        replied = anyio.Event()

        async def ask() -> None:
            reply.append(await requester.request(queue, 1, timeout=60))
            replied.set()

        async with requester.publisher(), anyio.create_task_group() as tg:
            await first_bus.__aenter__()
            stopped = False
            try:
                await self._warm_up(requester, queue, 0)
                tg.start_soon(ask)
                await entered.wait()
                # The first responder stops with the request in its handler (cancelled, so
                # released for redelivery, never acked) ...
                stopped = True
                await first_bus.__aexit__(None, None, None)
            finally:
                if not stopped:
                    await first_bus.__aexit__(None, None, None)
            # ... and a restarted one answers it within the requester's timeout.
            async with second_bus:
                with anyio.fail_after(60):
                    await replied.wait()
        assert reply == [10] and answered_by == ["second"]
