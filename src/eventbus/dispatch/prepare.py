"""Before the first attempt: the checks every delivery passes, one by one or in a batch.

An unreadable delivery and an undecodable body are dead-lettered (``undecodable``, DESIGN
3.4), an expired message is dead-lettered or dropped (`expiry.py`), and a ``dedup_key`` that
raises is a failure outside the handler (DESIGN 8). What passes gets its payload.
"""

from __future__ import annotations

from eventbus import headers as h
from eventbus.dispatch.decode import Decoder, DeliveryDefectError, Stopping
from eventbus.dispatch.dedup_guard import DedupGuard
from eventbus.dispatch.expiry import settled_expired
from eventbus.dispatch.outcome import DeadLetter
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.loggers import get_logger

__all__ = ["NOT_HANDLED", "prepare"]

log = get_logger("eventbus.dispatch")

NOT_HANDLED = object()
"""`prepare` settled the delivery (or the subscription is stopping): no attempt follows."""


async def prepare(
    sub: Subscriber, state: DeliveryState, decoder: Decoder, guard: DedupGuard | None
) -> object:
    """The payload for the first attempt (and ``state.dedup_key`` set), or `NOT_HANDLED`."""
    message = state.raw.message
    if state.raw.defect is not None:
        error = DeliveryDefectError(state.raw.defect)
        log.error("%s: unreadable delivery %s: %s", sub.describe(), message.id, error)
        await state.carry_out(DeadLetter("undecodable"), error)
        return NOT_HANDLED
    # Without the header (the usual case) one lookup, no coroutine: this runs per delivery.
    if h.EXPIRES_AT in message.headers and await settled_expired(sub, state):
        return NOT_HANDLED
    try:
        payload = await decoder.decode(message)
    except Stopping:
        return NOT_HANDLED
    except Exception as exc:  # any decoding failure is a poison message (DESIGN 3.4)
        log.error("%s: undecodable message %s: %r", sub.describe(), message.id, exc)
        await state.carry_out(DeadLetter("undecodable"), exc)
        return NOT_HANDLED
    if guard is not None:
        try:
            state.dedup_key = guard.key_of(message)
        except Exception as exc:  # the user's dedup_key: a failure outside the handler
            log.error("%s: dedup_key failed on %s: %r", sub.describe(), message.id, exc)
            await state.fail("internal", exc)
            return NOT_HANDLED
    return payload
