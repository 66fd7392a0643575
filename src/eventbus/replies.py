"""The requester's side of request-reply (DESIGN 12): waiting requests and their reply inbox.

A request carries a fresh correlation id and the reply-to of this bus's `ReplyInbox`; the
responder's return value comes back with the same correlation id (the core's responder copies
the request's; a hand-written one must too). `Replies` keeps one waiter per request in flight
and gives each reply to the waiter of its correlation id. A reply nobody waits for (it came
after its request timed out, or it is a second reply to a topic request: the first one wins)
is dropped and counted in `RequestStats.late`.

The inbox is started on the bus's first request, not with the bus: most buses never make one,
and on Kafka an inbox is a consumer group member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from eventbus import headers as h
from eventbus.codecs.json import BYTES, TEXT
from eventbus.errors import ConfigurationError, ResponderError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import ReplyInbox, Transport

__all__ = ["Replies", "RequestStats", "Waiter", "plain_type"]

_PLAIN_TYPES: dict[str, Any] = {TEXT.split(";")[0]: str, BYTES: bytes}
"""Replies decoded by content type when a request gives no ``response`` type."""


def plain_type(content_type: str | None) -> Any:
    """What to decode a reply as when the request named no type: text and bytes as such
    (whatever the charset parameter says), anything else as JSON (``Any``)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return _PLAIN_TYPES.get(media, Any)


log = get_logger("eventbus.replies")


@dataclass(slots=True)
class RequestStats:
    """What one bus's requests came to, since it was created (``bus.request_stats``)."""

    sent: int = 0
    replied: int = 0
    """Answered with a value."""
    failed: int = 0
    """Answered with the responder's error (`ResponderError`)."""
    timed_out: int = 0
    late: int = 0
    """Replies that found no request waiting: after a timeout, or after the first reply to a
    topic request. Dropped."""


class Waiter:
    """One request in flight: set once, by the first reply with its correlation id, or told
    that the bus stopped."""

    __slots__ = ("_event", "reply", "stopped")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.reply: Message | None = None
        self.stopped = False

    def set(self, reply: Message) -> None:
        self.reply = reply
        self._event.set()

    def stop(self) -> None:
        self.stopped = True
        self._event.set()

    async def wait(self) -> Message | None:
        """The reply; None when the bus stopped first."""
        await self._event.wait()
        return self.reply


class Replies:
    def __init__(self) -> None:
        self.stats = RequestStats()
        self._waiting: dict[str, Waiter] = {}
        self._inbox: ReplyInbox | None = None
        self._scope: anyio.CancelScope | None = None
        self._starting: anyio.Lock | None = None
        self._open = False

    def open(self) -> None:
        """The bus started: requests may start an inbox. The lock is made here, in the event
        loop the bus runs in (a bus may run in one loop after another: tests)."""
        self._open = True
        self._starting = anyio.Lock()

    async def address(self, transport: Transport, task_group: TaskGroup) -> str:
        """This bus's reply-to; the first call starts the transport's inbox in
        ``task_group``."""
        inbox = self._inbox
        if inbox is None:
            assert self._starting is not None
            async with self._starting:
                if not self._open:
                    # Stopping: a new inbox would be a task the closing task group waits for.
                    raise RuntimeError("the bus is stopping: no new requests")
                if self._inbox is None:
                    await task_group.start(self._run, _inbox_of(transport))
                inbox = self._inbox
                if inbox is None:  # it ended as soon as it started
                    raise RuntimeError("the reply inbox ended as it started; see the log")
        return await inbox.address()

    async def _run(self, inbox: ReplyInbox, *, task_status: TaskStatus[None]) -> None:
        replies = self

        class _Status:
            def started(self, value: None = None) -> None:
                replies._inbox = inbox  # before the starter resumes, whatever happens next
                task_status.started(value)

        with anyio.CancelScope() as self._scope:
            try:
                await inbox.run(self._deliver, task_status=_Status())
            except Exception:
                if self._inbox is not inbox:
                    raise  # not started: the request that started it gets the error
                # A broken inbox must not take the bus down with it: the next request starts
                # a new one; those waiting now time out.
                log.exception("the reply inbox failed; the next request opens a new one")
            finally:
                if self._inbox is inbox:
                    self._inbox = None  # ended, however: never left in place dead

    def stop(self) -> None:
        """The bus stops: no new requests, the inbox ends, waiting requests are told."""
        self._open = False
        if self._scope is not None:
            self._scope.cancel()
        self._scope = None
        self._inbox = None
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.stop()

    def expect(self, correlation_id: str) -> Waiter:
        waiter = self._waiting[correlation_id] = Waiter()
        return waiter

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def _deliver(self, reply: Message) -> None:
        waiter = self._waiting.pop(reply.correlation_id or "", None)
        if waiter is None:
            self.stats.late += 1
            log.debug("dropped a late reply (correlation id %s)", reply.correlation_id)
            return
        waiter.set(reply)

    def raise_for_error(self, name: str, reply: Message) -> None:
        """`ResponderError` when ``reply`` says the responder failed."""
        error_type = reply.headers.get(h.ERROR_TYPE)
        if error_type is None:
            return
        self.stats.failed += 1
        raise ResponderError(
            name,
            error_type,
            reply.headers.get(h.ERROR_MESSAGE, ""),
            reply.headers.get(h.DLQ_REASON, "failed"),
        )


def _inbox_of(transport: Transport) -> ReplyInbox:
    factory: Callable[[], Any] | None = getattr(transport, "reply_inbox", None)
    if factory is None:
        raise ConfigurationError(
            f"{type(transport).__name__} cannot receive replies: bus.request needs a transport "
            "with a reply inbox (memory, Kafka and RabbitMQ have one)"
        )
    inbox: ReplyInbox = factory()
    return inbox
