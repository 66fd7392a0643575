"""``async with bus.publisher():`` connects for publishing without starting handlers or hooks
(DESIGN 2), and ``on_shutdown`` hooks run after the drain, before the transport closes."""

from __future__ import annotations

import logging

import anyio
import pytest

from eventbus import EventBus, Message
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


async def test_publisher_joins_no_group_and_runs_no_hook(url: str, broker: MemoryBroker) -> None:
    bus = EventBus(url)
    handled: list[Message] = []
    hooks: list[str] = []

    @bus.subscribe("orders", group="billing")
    async def bill(message: Message) -> None:
        handled.append(message)

    @bus.on_startup
    async def start() -> None:
        hooks.append("startup")

    @bus.on_shutdown
    async def stop() -> None:
        hooks.append("shutdown")

    web = EventBus(url)
    web.subscribe("orders", group="billing")(bill)  # the same app, imported by the web process
    async with bus:  # the worker creates the group first
        pass
    async with web.publisher() as publishing:
        assert publishing is web and web.ready
        await web.publish("orders", {"n": 1})
        await anyio.sleep(0.05)
        assert handled == [], "a publisher never handles"
        assert len(broker.ready("orders", "billing")) == 1
    assert not web.ready
    assert hooks == ["startup", "shutdown"], "the worker's hooks ran; the publisher's did not"
    async with bus:
        await wait_for(lambda: len(handled) == 1)


async def test_publishing_needs_a_started_bus(url: str) -> None:
    bus = EventBus(url)
    with pytest.raises(RuntimeError, match="not running"):
        await bus.publish("orders", {})
    async with bus.publisher():
        await bus.publish("orders", {})
    with pytest.raises(RuntimeError, match="not running"):
        await bus.publish("orders", {})


async def test_shutdown_hooks_run_after_the_drain_and_can_publish(
    url: str, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(url)
    events: list[str] = []
    release = anyio.Event()

    @bus.consume("jobs")
    async def job(message: Message) -> None:
        events.append("handling")
        await release.wait()
        events.append("handled")

    @bus.on_shutdown
    async def broken() -> None:
        raise ValueError("flush failed")

    @bus.on_shutdown
    async def goodbye() -> None:
        events.append("shutdown")
        await bus.publish("audit", {"event": "stopping"})

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        async with bus:
            await bus.send("jobs", {})
            await wait_for(lambda: events == ["handling"])
            release.set()
    assert events == ["handling", "handled", "shutdown"], "after the drain; one failure stops none"
    assert [m.body for m in broker.published("audit")] == [b'{"event":"stopping"}']
    assert "shutdown hook" in caplog.text and "broken" in caplog.text
    assert "ValueError: flush failed" in caplog.text
