"""Correlation and causation (DESIGN 9): a message published while a handler runs carries the
handled message's correlation id (its id when it has none) and its id as
``eventbus-causation-id``; an explicit ``correlation_id=`` wins. No tracing library needed."""

from __future__ import annotations

import anyio

from eventbus import EventBus, Message
from eventbus import headers as h
from eventbus.testing.conformance import wait_for


async def test_a_chain_of_handlers_shares_one_correlation_id(url: str) -> None:
    bus = EventBus(url)
    seen: dict[str, Message] = {}

    @bus.subscribe("a", group="g")
    async def first(message: Message) -> None:
        seen["a"] = message
        await bus.publish("b", {"from": "a"})

    @bus.subscribe("b", group="g")
    async def second(message: Message) -> None:
        seen["b"] = message
        await bus.publish_many("c", [{"from": "b"}])

    @bus.subscribe("c", group="g")
    async def third(message: Message) -> None:
        seen["c"] = message

    async with bus:
        await bus.publish("a", {}, message_id="root")
        await wait_for(lambda: "c" in seen)
    assert seen["a"].correlation_id is None and h.CAUSATION_ID not in seen["a"].headers
    assert seen["b"].correlation_id == "root" and seen["b"].headers[h.CAUSATION_ID] == "root"
    assert seen["c"].correlation_id == "root"
    assert seen["c"].headers[h.CAUSATION_ID] == seen["b"].id


async def test_the_handled_message_correlation_id_is_passed_on(url: str) -> None:
    bus = EventBus(url)
    seen: dict[str, Message] = {}

    @bus.subscribe("a", group="g")
    async def first(message: Message) -> None:
        await bus.send("jobs", {"n": 1})
        await bus.send("jobs", {"n": 2}, correlation_id="mine")

    @bus.consume("jobs")
    async def job(message: Message) -> None:
        seen[message.body.decode()] = message

    async with bus:
        await bus.publish("a", {}, message_id="m-1", correlation_id="order-42")
        await wait_for(lambda: len(seen) == 2)
    one, two = (seen[f'{{"n":{n}}}'] for n in (1, 2))
    assert (one.correlation_id, one.headers[h.CAUSATION_ID]) == ("order-42", "m-1")
    assert (two.correlation_id, two.headers[h.CAUSATION_ID]) == ("mine", "m-1"), "explicit wins"


async def test_a_synchronous_handler_publishing_through_the_loop_carries_its_cause(
    url: str,
) -> None:
    bus = EventBus(url)
    seen: list[Message] = []

    @bus.subscribe("a", group="g")
    def blocking(message: Message) -> None:
        anyio.from_thread.run(bus.publish, "b", {})

    @bus.subscribe("b", group="g")
    async def after(message: Message) -> None:
        seen.append(message)

    async with bus:
        await bus.publish("a", {}, message_id="sync-root")
        await wait_for(lambda: len(seen) == 1)
    assert seen[0].correlation_id == "sync-root"
    assert seen[0].headers[h.CAUSATION_ID] == "sync-root"


async def test_outside_a_handler_nothing_is_added(url: str) -> None:
    bus = EventBus(url)
    seen: list[Message] = []

    @bus.subscribe("a", group="g")
    async def handle(message: Message) -> None:
        seen.append(message)

    async with bus:
        await bus.publish("a", {})
        await wait_for(lambda: len(seen) == 1)
    assert seen[0].correlation_id is None
    assert h.CAUSATION_ID not in seen[0].headers
