"""`TestBus`'s bookkeeping: which subscriptions each published message still owes an outcome.

Three sources feed it, all from the real pipeline: every publish on the test's broker (the
transport calls `Ledger.published`), every handler call (`Ledger.middleware`, the outermost
middleware after tracing, so it sees the arguments and what the pipeline's own decision
sees), and every settle (`Ledger.observer`, the core's `dispatch.observe` hook).

The accounting: a *unit* is one message id at one receiver -- a topic's group, a broadcast
subscription, or a queue (its consumers compete, so they are one receiver). Each publish that
reaches a receiver adds one to its unit's ``pending``; each settle takes one off. A redelivery
through the broker is a publish (+1) before the ack of the old copy (-1), so ``pending``
never touches zero while a retry is under way; a broadcast's requeue publishes nothing and
takes nothing off. A manual-ack delivery left unsettled takes one off when its handler
returns: the test knows at once, instead of after ``ack_timeout``; if it is settled later, the
outcome is updated without counting it twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import anyio

from eventbus import headers as h
from eventbus.dispatch.current import HANDLING
from eventbus.dispatch.invoke import Handler
from eventbus.dispatch.observe import BatchCall, Observer, Settlement
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import Retry
from eventbus.message import Delivery, Message
from eventbus.testing.outcomes import Attempt, Outcome, Status
from eventbus.transports.base import Destination

__all__ = ["Ledger"]


def receiver_of(sub: Subscriber) -> str:
    """Subscriptions with the same receiver compete for a message; others each get it."""
    if sub.kind == "queue":
        return f"queue:{sub.name}"
    if sub.group is None:
        return f"broadcast:{sub.name}:{id(sub)}"
    return f"topic:{sub.name}:{sub.group}"


@dataclass(slots=True)
class _Unit:
    pending: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    """Handler calls since the last outcome."""
    ran: set[int] = field(default_factory=set)
    """Raw deliveries (by id) the handler was called for: an ack without a call is a duplicate."""
    outcomes: list[Outcome] = field(default_factory=list)
    unsettled: dict[int, int] = field(default_factory=dict)
    """Raw delivery id -> index in ``outcomes`` of an ``unsettled`` outcome."""


class Ledger:
    def __init__(self, subscribers: Sequence[Subscriber], *, instant_retries: bool) -> None:
        self._subscribers = subscribers
        self._instant_retries = instant_retries
        self._units: dict[tuple[str, str], _Unit] = {}
        self._changed = anyio.Event()
        self.unsettled: list[Callable[[], Awaitable[None]]] = []
        """Give back what manual-ack handlers left unsettled (`TestBus` does it at exit)."""
        self.sent: dict[tuple[str, str], Message] = {}
        """The last message published with each id to each destination, as published."""

    # -- what goes where ----------------------------------------------------------------------

    def receivers(self, to: Destination) -> list[str]:
        """The app's receivers a publish to ``to`` reaches, in registration order."""
        found: list[str] = []
        for sub in self._subscribers:
            if sub.kind != to.kind or sub.name != to.name:
                continue
            if to.group is not None and sub.group != to.group:
                continue  # a retry (or replay) for one group only
            receiver = receiver_of(sub)
            if receiver not in found:
                found.append(receiver)
        return found

    def published(self, to: Destination, message: Message) -> None:
        if h.ATTEMPT not in message.headers:  # not a redelivery: what the publisher sent
            self.sent[(message.id, to.name)] = message
        for receiver in self.receivers(to):
            self._unit(message.id, receiver).pending += 1

    def _unit(self, message_id: str, receiver: str) -> _Unit:
        unit = self._units.get((message_id, receiver))
        if unit is None:
            unit = self._units[(message_id, receiver)] = _Unit()
        return unit

    # -- handler calls ------------------------------------------------------------------------

    def middleware(self, handler: Handler) -> Handler:
        async def record(delivery: Delivery) -> None:
            handling = HANDLING.get()
            if handling is None:  # not called by the pipeline: nothing to record
                await handler(delivery)
                return
            sub, state = handling
            unit = self._unit(delivery.message.id, receiver_of(sub))
            unit.ran.add(id(state.raw))
            attempt = Attempt(
                delivery.attempt,
                sub.handler.kwargs(delivery.payload, delivery),
                delivery.payload,
                None,
            )
            # Recorded before the call: a manual-ack handler may settle inside it.
            unit.attempts.append(attempt)
            index = len(unit.attempts) - 1
            try:
                await handler(delivery)
            except BaseException as exc:
                if index < len(unit.attempts) and unit.attempts[index] is attempt:
                    unit.attempts[index] = replace(attempt, error=exc)
                if self._instant_retries and isinstance(exc, Retry) and exc.delay:
                    # The handler asked for a pause; a test only needs the next attempt.
                    raise Retry(0.0, str(exc)) from exc
                raise

        return record

    # -- settles ------------------------------------------------------------------------------

    def observer(self, sub: Subscriber) -> Observer:
        receiver = receiver_of(sub)

        def observe(event: Settlement | BatchCall) -> None:
            if isinstance(event, BatchCall):
                error = event.error
                if self._instant_retries and isinstance(error, Retry) and error.delay:
                    # What `middleware` does for one message; a batch handler has no middleware
                    # to rewrite it in, so the pause it asked for is dropped here, before the
                    # pipeline reads it.
                    error.delay = 0.0
                for raw_delivery, delivery in event.items:
                    called = self._unit(delivery.message.id, receiver)
                    called.ran.add(id(raw_delivery))
                    attempt = Attempt(delivery.attempt, event.args, delivery.payload, event.error)
                    called.attempts.append(attempt)
                return
            unit = self._unit(event.raw.message.id, receiver)
            raw = id(event.raw)
            late = unit.unsettled.pop(raw, None)
            if event.how == "released":
                return  # the bus is stopping: no outcome
            if event.how == "redelivered":
                unit.ran.discard(raw)
                if late is None and not sub.broadcast:
                    unit.pending -= 1  # its redelivery was published (+1) before
                return
            if late is not None:
                # Settled after its manual-ack handler returned, which was counted then.
                earlier = unit.outcomes[late]
                unit.outcomes[late] = self._outcome(sub, event, earlier.attempts, ran=True)
            else:
                outcome = self._outcome(sub, event, tuple(unit.attempts), ran=raw in unit.ran)
                if event.how == "unsettled":
                    unit.unsettled[raw] = len(unit.outcomes)
                    assert event.release is not None
                    self.unsettled.append(event.release)
                unit.outcomes.append(outcome)
                unit.attempts = []
                unit.pending -= 1
            unit.ran.discard(raw)
            self._notify()

        return observe

    @staticmethod
    def _outcome(
        sub: Subscriber, event: Settlement, attempts: tuple[Attempt, ...], *, ran: bool
    ) -> Outcome:
        status: Status
        if event.how == "dead-lettered":
            status = "dead-lettered"
        elif event.how == "unsettled":
            status = "unsettled"
        elif event.how == "expired":
            status = "expired"
        else:  # acked: a duplicate when deduplication skipped the handler
            status = "handled" if ran else "duplicate"
        # The handler's own exception when its last call raised (the pipeline may have seen it
        # rewritten, as `Retry` is above), else what ended the delivery (a nack, a decoding
        # error), else the last failure before it was handled.
        last = attempts[-1].error if attempts else None
        error = last or event.error or next((a.error for a in reversed(attempts) if a.error), None)
        return Outcome(
            handler=sub.handler.func,
            subscription=sub.describe(),
            group=sub.group,
            status=status,
            message=event.raw.message,
            attempts=attempts,
            reason=event.reason,
            error=error,
        )

    # -- waiting ------------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def settled(self, message_id: str, receivers: Iterable[str]) -> bool:
        return all(self._unit(message_id, r).pending <= 0 for r in receivers)

    def idle(self) -> bool:
        return all(unit.pending <= 0 for unit in self._units.values())

    def outcomes(self, message_id: str, receivers: Iterable[str]) -> tuple[Outcome, ...]:
        found = (self._unit(message_id, r).outcomes for r in receivers)
        return tuple(outcomes[-1] for outcomes in found if outcomes)

    def waiting(self) -> list[str]:
        """Message ids and receivers still owed an outcome (for timeout messages)."""
        return [f"{mid} at {r}" for (mid, r), unit in self._units.items() if unit.pending > 0]

    async def wait(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._changed.wait()
