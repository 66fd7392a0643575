"""`TestBus`: run an app's real `EventBus` on a private in-memory broker and see outcomes.

Under any test runner (it is a plain async context manager)::

    async with TestBus(bus) as client:
        result = await client.publish("in", User(name="John"))
        assert result.handled_with == User(name="John")

``publish`` returns once every subscription that received the message reached an outcome:
handled (with the attempts it took), dead-lettered (with the reason), skipped as a duplicate,
or, for a manual-ack handler, left unsettled. No polling, no sleeping.

What runs is the bus itself: its handlers, middleware, retry policies, dead letters and
deduplication, through the one dispatch pipeline. For the block, the bus gets

- a fresh in-memory broker of its own (its transport is put back afterwards), so no test sees
  another's messages, whatever URL the app was built with;
- a fresh in-memory dedup store if it used the default one (a store the app gave is kept);
- fresh `SubscriberStats`;
- with ``instant_retries`` (the default), no waiting between attempts: the retry policies'
  delays, ``Retry(delay=...)`` and ``nack(delay=...)`` become zero, while attempts are
  counted and ``max_attempts`` applies as configured;
- with ``unbound_topic="refuse"``, a topic publish that no subscription receives raises
  `eventbus.UnroutableError`, as on RabbitMQ; by default it succeeds (Kafka, memory) and its
  result says nothing received it.

Manual acks: when a manual-ack handler returns without settling, its outcome is ``unsettled``
at once (``ack_timeout`` is not waited for). Leaving the block gives such deliveries back, as
a stopping worker does, so it never waits for ``ack_timeout`` or ``graceful_timeout`` either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import anyio

from eventbus import headers as h
from eventbus.bus import EventBus
from eventbus.dedup.memory import MemoryDedupStore
from eventbus.dispatch.subscriber import SubscriberStats
from eventbus.errors import UnroutableError
from eventbus.message import Message
from eventbus.testing.ledger import Ledger
from eventbus.testing.outcomes import PublishResult
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryBroker, MemoryTransport

__all__ = ["TestBus"]


class _TestTransport(MemoryTransport):
    """A memory transport on a private broker that tells the ledger about every publish."""

    def __init__(self, ledger: Ledger, *, refuse_unbound: bool, instant_retries: bool) -> None:
        super().__init__(broker=MemoryBroker())
        self._ledger = ledger
        self._refuse_unbound = refuse_unbound
        self._instant_retries = instant_retries
        if refuse_unbound:
            self.capabilities = dataclasses.replace(self.capabilities, unbound_topic="refuse")

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if (
            self._refuse_unbound
            and to.kind == "topic"
            and to.group is None
            and not self.broker.bound(to.name)
        ):
            error = UnroutableError(
                f"no subscription receives topic {to.name!r} "
                "(TestBus unbound_topic='refuse', as on RabbitMQ)"
            )
            error.failures = dict.fromkeys(range(len(messages)), error)
            raise error
        redelivery = all(h.ATTEMPT in m.headers for m in messages)  # a retry's next attempt
        if self._instant_retries and to.not_before is not None and redelivery:
            to = dataclasses.replace(to, not_before=None)
        for message in messages:
            self._ledger.published(to, message)
        await super().publish(to, messages)


class TestBus:
    """Runs ``bus`` on a private in-memory broker for the ``async with`` block and reports
    what became of each message published through it (module docstring).

    ``instant_retries``: no waiting between attempts (default True). ``unbound_topic``:
    ``"refuse"`` makes a topic publish that nothing receives raise `eventbus.UnroutableError`
    (RabbitMQ's behaviour); ``"keep"`` (default) lets it succeed. ``timeout``: seconds
    `publish`, `send` and `idle` wait for outcomes before raising `TimeoutError` naming what
    is still pending.
    """

    __test__ = False  # a helper, not a test class, despite its name

    def __init__(
        self,
        bus: EventBus,
        *,
        instant_retries: bool = True,
        unbound_topic: Literal["keep", "refuse"] = "keep",
        timeout: float = 10.0,
    ) -> None:
        if unbound_topic not in ("keep", "refuse"):
            raise ValueError(f"unbound_topic must be 'keep' or 'refuse', not {unbound_topic!r}")
        self.bus = bus
        self.instant_retries = instant_retries
        self.unbound_topic = unbound_topic
        self.timeout = timeout
        self._ledger: Ledger | None = None
        self._transport: _TestTransport | None = None
        self._restore: list[Callable[[], None]] = []

    @property
    def broker(self) -> MemoryBroker:
        """The private broker of the running block (``published``, ``ready``, ``log``)."""
        return self._running()[1].broker

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> TestBus:
        bus = self.bus
        if self._ledger is not None:
            raise RuntimeError("this TestBus is already running")
        if bus._running:
            raise RuntimeError("TestBus starts the bus itself, on its own broker: stop it first")
        ledger = Ledger(bus.subscribers, instant_retries=self.instant_retries)
        transport = _TestTransport(
            ledger,
            refuse_unbound=self.unbound_topic == "refuse",
            instant_retries=self.instant_retries,
        )
        self._swap(ledger, transport)
        try:
            await bus.__aenter__()
        except BaseException:
            self._put_back()
            raise
        self._ledger, self._transport = ledger, transport
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        ledger = self._ledger
        assert ledger is not None
        try:
            # Fetch nothing more, then give back what manual-ack handlers left unsettled: the
            # drain would otherwise wait for them until graceful_timeout.
            for runner in self.bus._runners:
                runner.pause()
            with anyio.CancelScope(shield=True):
                for release in ledger.unsettled:
                    await release()  # a no-op for those settled since
            try:
                return await self.bus.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                if exc is not None and _leaves(group) == [exc]:
                    # The block's own error (a failed assert), wrapped by the bus's task group:
                    # let it propagate as it was raised, for a readable test failure.
                    return False
                raise
        finally:
            self._put_back()
            self._ledger = self._transport = None

    def _swap(self, ledger: Ledger, transport: _TestTransport) -> None:
        """Point the bus at the test's broker, dedup store and recorders; `_put_back` undoes
        it all, so the app's bus is as it was after the block."""
        bus = self.bus
        self._set(bus, "transport", transport)
        self._set(bus, "middleware", (ledger.middleware, *bus.middleware))
        default_store = None if bus._dedup_store_given else bus._dedup_store
        fresh_store = MemoryDedupStore()
        if default_store is not None:
            self._set(bus, "_dedup_store", fresh_store)
        for sub in bus.subscribers:
            options = sub.options
            if default_store is not None and options.dedup is default_store:
                options = dataclasses.replace(options, dedup=fresh_store)
            if self.instant_retries:
                retry = dataclasses.replace(options.retry, initial_delay=0.0, max_delay=0.0)
                options = dataclasses.replace(options, retry=retry)
            self._set(sub, "options", options)
            self._set(sub, "stats", SubscriberStats())
            self._set(sub, "observer", ledger.observer(sub))

    def _set(self, target: object, name: str, value: object) -> None:
        old = getattr(target, name)
        setattr(target, name, value)
        self._restore.append(lambda: setattr(target, name, old))

    def _put_back(self) -> None:
        while self._restore:
            self._restore.pop()()

    def _running(self) -> tuple[Ledger, _TestTransport]:
        if self._ledger is None or self._transport is None:
            raise RuntimeError("use the TestBus inside `async with TestBus(bus) as client:`")
        return self._ledger, self._transport

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        delay: float | None = None,
        at: datetime | None = None,
    ) -> PublishResult:
        """`EventBus.publish`, then wait until every subscription that received the message
        reached an outcome (with ``delay``/``at``, once it fell due: within the TestBus
        ``timeout``)."""
        self._running()
        sent = await self.bus.publish(
            topic,
            payload,
            key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            ttl=ttl,
            expires_at=expires_at,
            delay=delay,
            at=at,
        )
        return await self._result(Destination(topic, "topic"), sent)

    async def send(
        self,
        queue: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        delay: float | None = None,
        at: datetime | None = None,
    ) -> PublishResult:
        """`EventBus.send`, then wait until the queue's consumer reached an outcome."""
        self._running()
        sent = await self.bus.send(
            queue,
            payload,
            key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            ttl=ttl,
            expires_at=expires_at,
            delay=delay,
            at=at,
        )
        return await self._result(Destination(queue, "queue"), sent)

    async def _result(self, to: Destination, message_id: str) -> PublishResult:
        ledger = self._running()[0]
        receivers = ledger.receivers(to)
        await self._wait(lambda: ledger.settled(message_id, receivers), f"message {message_id}")
        message = ledger.sent[(message_id, to.name)]
        return PublishResult(message, ledger.outcomes(message_id, receivers))

    async def idle(self) -> None:
        """Wait until every message published in the block -- by the test, by handlers, dead
        letters to a queue the app consumes -- reached an outcome in every subscription that
        received it."""
        ledger = self._running()[0]
        await self._wait(ledger.idle, "every message")

    async def _wait(self, done: Callable[[], bool], what: str) -> None:
        ledger = self._running()[0]
        try:
            with anyio.fail_after(self.timeout):
                await ledger.wait(done)
        except TimeoutError:
            pending = ", ".join(ledger.waiting()) or "nothing"
            raise TimeoutError(
                f"TestBus: {what} had no outcome within {self.timeout:g}s (a handler still "
                f"running or waiting?); pending: {pending}"
            ) from None

    # -- inspecting ---------------------------------------------------------------------------

    def published(self, name: str, payload_type: Any = None) -> list[Any]:
        """Messages published to topic or queue ``name`` in the block, in order: the test's,
        the handlers', retries and dead letters (``"<topic>.<group>.dlq"``). With
        ``payload_type``, their payloads decoded with the bus's codec instead."""
        messages = self._running()[1].broker.published(name)
        if payload_type is None:
            return messages
        codec = self.bus._sync_codec
        if codec is None:
            raise TypeError("published(name, payload_type) needs a synchronous codec")
        return [codec.decode(m, payload_type) for m in messages]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found
