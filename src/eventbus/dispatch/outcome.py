"""What follows a failed attempt: one pure function (DESIGN 8, "One decision, one place").

Every way an attempt can fail comes here -- an exception from the handler (including `Retry`
and `Reject`), a manual ``nack()``, an ``ack_timeout`` that ran out, a body that cannot be
decoded, a failure in the pipeline outside the handler -- and leaves with one `Outcome`. The
runner and the settle path only carry it out, so the rules cannot drift apart again (in 0.1 a
raised error followed the policy and a ``nack()`` did not).

The rules:

- undecodable body: dead letter (``undecodable``) at once; another attempt decodes the same.
- `Reject` raised, or an error the policy does not retry (``give_up_on`` / not ``retry_on``):
  dead letter (``rejected``) at once. A `BaseException` that is not an `Exception` (a stray
  ``CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` from handler code) is retried
  unless ``give_up_on`` names it: it is never the bus's own cancellation, which the runner
  tells apart and never counts as a failure.
- the policy's attempts are spent: dead letter (``retries-exhausted``).
- otherwise retry after ``Retry.delay`` / the ``nack`` delay when given, else the policy's
  backoff for this attempt. A raised error retries in process (the key lane waits) unless
  ``via_broker``; ``nack()`` and ``ack_timeout`` always go through the broker (DESIGN 8), since
  the delivery may already be out of the handler's hands.
- a failure outside the handler is retried like a raised error whatever ``retry_on`` says: it
  says nothing about the message, so it spends an attempt but never dead-letters early.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from eventbus.dispatch.deadletter import DeadLetterReason
from eventbus.errors import Reject, Retry
from eventbus.retry import RetryPolicy

__all__ = ["DeadLetter", "Failure", "Outcome", "RetryInProcess", "RetryViaBroker", "decide"]

Failure = Literal["raised", "nacked", "ack-timeout", "undecodable", "internal"]
"""How an attempt failed: the handler raised; ``delivery.nack()``; a manual-ack delivery was
not settled within ``ack_timeout``; the body could not be decoded; the pipeline around the
handler failed (a ``dedup_key`` that raised, say)."""


@dataclass(frozen=True, slots=True)
class RetryInProcess:
    """Wait ``delay`` seconds in this process (the key lane waits, other keys flow), then run
    attempt + 1."""

    delay: float


@dataclass(frozen=True, slots=True)
class RetryViaBroker:
    """Publish the message back for attempt + 1, not before ``delay`` seconds, then ack."""

    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: DeadLetterReason


Outcome = RetryInProcess | RetryViaBroker | DeadLetter


def decide(
    policy: RetryPolicy,
    attempt: int,
    error: BaseException | None,
    how: Failure,
    *,
    delay: float | None = None,
    broadcast: bool = False,
    rng: random.Random | None = None,
) -> Outcome:
    """The outcome of failed ``attempt`` (1-based). ``delay``: what ``nack(delay)`` asked for.
    ``broadcast``: the subscription has no group to send a retry to, so a ``via_broker``
    retry of a raised error waits in process instead."""
    if how == "undecodable":
        return DeadLetter("undecodable")
    if how == "raised" and not _retryable(policy, error):
        return DeadLetter("rejected")
    if attempt >= policy.max_attempts:
        return DeadLetter("retries-exhausted")
    if isinstance(error, Retry) and error.delay is not None:
        delay = error.delay
    wait = policy.delay(attempt, rng) if delay is None else max(0.0, delay)
    if how in ("nacked", "ack-timeout") or (
        how == "raised" and policy.via_broker and not broadcast
    ):
        return RetryViaBroker(wait)
    return RetryInProcess(wait)


def _retryable(policy: RetryPolicy, error: BaseException | None) -> bool:
    if error is None or isinstance(error, Reject):
        return False
    if isinstance(error, Retry):
        return True
    if not isinstance(error, Exception):
        # A stray CancelledError, a KeyboardInterrupt or SystemExit raised by handler code:
        # nothing a policy's retry_on was written for, so it is retried (DESIGN 8) unless
        # give_up_on names it.
        return not isinstance(error, policy.give_up_on)
    return policy.retryable(error)
