"""What `TestBus` reports: how each subscription finished with a published message.

A `PublishResult` holds one `Outcome` per subscription that received the message: every group
of a topic (and every broadcast subscription), or the one consumer of a queue. When exactly one
received it, the result answers for it directly (``result.handled_with``, ``result.attempts``),
so the usual test needs no selection; otherwise pick one with ``result.outcome(handler)`` or
``result.outcome(group="billing")``.

Accessors that only make sense for one outcome (``handled_with`` on a dead letter, any shortcut
on a message several subscriptions received) raise `AssertionError` with what happened instead:
a failing ``assert result.handled_with == ...`` then says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eventbus.dispatch.deadletter import DeadLetterReason
from eventbus.message import Message

__all__ = ["Attempt", "Outcome", "PublishResult", "Status"]

Status = Literal["handled", "dead-lettered", "unsettled", "duplicate", "expired"]
"""``handled``: acked after the handler ran (a manual-ack handler acked it); ``dead-lettered``:
sent to the dead-letter queue (``Outcome.reason`` says why), or dropped when the subscription
has ``dead_letter=None``; ``unsettled``: a manual-ack handler returned without settling it;
``duplicate``: skipped by deduplication, the handler did not run; ``expired``: past its
``ttl``/``expires_at``, acked unhandled by a subscription with ``on_expired="drop"`` (with the
default it is ``dead-lettered``, reason ``expired``)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call of the handler (through the bus's middleware)."""

    number: int
    """1-based, as `Delivery.attempt`."""
    args: Mapping[str, object]
    """The arguments the handler was called with, by parameter name."""
    payload: object
    """The decoded payload (None when the handler takes none)."""
    error: BaseException | None
    """What the attempt raised; None when it returned."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one subscription finished with one message."""

    handler: Callable[..., Any]
    """The handler function, as decorated."""
    subscription: str
    """Readable: ``"bill <- topic orders group billing"``."""
    group: str | None
    status: Status
    message: Message
    """The message as the subscription received it last (``eventbus-attempt`` included)."""
    attempts: tuple[Attempt, ...]
    """Every handler call, in order (empty for a duplicate or an undecodable message)."""
    reason: DeadLetterReason | None = None
    """Why it was dead-lettered: ``rejected``, ``retries-exhausted``, ``undecodable`` or
    ``expired``."""
    error: BaseException | None = None
    """What the last failed attempt raised (for a dead letter: its cause)."""

    @property
    def handled(self) -> bool:
        return self.status == "handled"

    @property
    def payload(self) -> object:
        """The decoded payload the handler got last; None if it never ran."""
        return self.attempts[-1].payload if self.attempts else None

    @property
    def args(self) -> Mapping[str, object]:
        """The arguments of the last handler call, by parameter name."""
        return self.attempts[-1].args if self.attempts else {}

    @property
    def errors(self) -> list[BaseException]:
        """What each failed attempt raised, in order."""
        return [a.error for a in self.attempts if a.error is not None]

    @property
    def handled_with(self) -> object:
        """The payload of the attempt that handled it; `AssertionError` if it was not handled."""
        if self.status != "handled":
            raise AssertionError(f"not handled: {self.describe()}")
        return self.payload

    def describe(self) -> str:
        text = f"{self.subscription}: {self.status}"
        if self.reason:
            text += f" ({self.reason})"
        text += f" after {len(self.attempts)} attempt(s)"
        if self.error is not None:
            text += f", last error {self.error!r}"
        return text


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What became of one published message, once every subscription that received it
    reached an outcome."""

    message: Message
    """The message as published (``message.id``, headers, ...)."""
    outcomes: tuple[Outcome, ...]
    """One per subscription that received it, in the order the handlers were registered."""

    @property
    def received(self) -> bool:
        """Whether any subscription of the app received it."""
        return bool(self.outcomes)

    @property
    def status(self) -> Status | Literal["unreceived"]:
        """The only outcome's status; ``"unreceived"`` when no subscription received it."""
        return self._only().status if self.outcomes else "unreceived"

    def outcome(
        self, handler: Callable[..., Any] | None = None, *, group: str | None = None
    ) -> Outcome:
        """The outcome of the subscription with this handler function and/or this group;
        without arguments, the only one."""
        if handler is None and group is None:
            return self._only()
        found = [
            o
            for o in self.outcomes
            if (handler is None or o.handler is handler) and (group is None or o.group == group)
        ]
        if len(found) != 1:
            wanted = " and ".join(
                w
                for w in (
                    f"handler {getattr(handler, '__qualname__', handler)}" if handler else "",
                    f"group {group!r}" if group else "",
                )
                if w
            )
            raise AssertionError(f"{len(found)} outcomes for {wanted}; {self._listing()}")
        return found[0]

    # -- shortcuts to the only outcome --------------------------------------------------------

    @property
    def handled(self) -> bool:
        return self._only().handled

    @property
    def handled_with(self) -> object:
        return self._only().handled_with

    @property
    def payload(self) -> object:
        return self._only().payload

    @property
    def args(self) -> Mapping[str, object]:
        return self._only().args

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return self._only().attempts

    @property
    def reason(self) -> DeadLetterReason | None:
        return self._only().reason

    @property
    def error(self) -> BaseException | None:
        return self._only().error

    @property
    def errors(self) -> list[BaseException]:
        return self._only().errors

    def _only(self) -> Outcome:
        if len(self.outcomes) == 1:
            return self.outcomes[0]
        if not self.outcomes:
            raise AssertionError(
                f"no subscription received message {self.message.id} published to "
                f"{self.message.topic!r}"
            )
        raise AssertionError(
            f"{len(self.outcomes)} subscriptions received it; pick one with "
            f"result.outcome(handler) or result.outcome(group=...): {self._listing()}"
        )

    def _listing(self) -> str:
        return "; ".join(o.describe() for o in self.outcomes) or "none received it"
