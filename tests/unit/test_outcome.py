"""`outcome.decide`: what follows every kind of failed attempt, as one table (DESIGN 8)."""

import random

import pytest

from eventbus import Reject, Retry, RetryPolicy
from eventbus.dispatch.outcome import (
    DeadLetter,
    Failure,
    Outcome,
    RetryInProcess,
    RetryViaBroker,
    decide,
)

FLAT = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=10, jitter=False)
BROKER = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=False, via_broker=True)
PICKY = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=False, retry_on=(ConnectionError,))


@pytest.mark.parametrize(
    ("policy", "attempt", "error", "how", "delay", "expected"),
    [
        # A raised error follows the policy: in process, with its backoff.
        (FLAT, 1, ValueError(), "raised", None, RetryInProcess(0.5)),
        (FLAT, 2, ValueError(), "raised", None, RetryInProcess(1.0)),
        (FLAT, 3, ValueError(), "raised", None, DeadLetter("retries-exhausted")),
        (BROKER, 1, ValueError(), "raised", None, RetryViaBroker(0.5)),
        (FLAT, 1, Retry(delay=7), "raised", None, RetryInProcess(7)),
        (FLAT, 3, Retry(delay=7), "raised", None, DeadLetter("retries-exhausted")),
        (FLAT, 1, Reject("no"), "raised", None, DeadLetter("rejected")),
        (PICKY, 1, ValueError(), "raised", None, DeadLetter("rejected")),
        (PICKY, 1, ConnectionError(), "raised", None, RetryInProcess(0.5)),
        (PICKY, 1, Retry(), "raised", None, RetryInProcess(0.5)),
        # nack() and ack_timeout: always through the broker, the policy's backoff by default,
        # whatever retry_on says (nobody raised anything).
        (PICKY, 1, None, "nacked", None, RetryViaBroker(0.5)),
        (FLAT, 2, None, "nacked", None, RetryViaBroker(1.0)),
        (FLAT, 1, None, "nacked", 3.0, RetryViaBroker(3.0)),
        (FLAT, 1, None, "nacked", 0.0, RetryViaBroker(0.0)),
        (FLAT, 3, None, "nacked", 3.0, DeadLetter("retries-exhausted")),
        (FLAT, 1, None, "ack-timeout", None, RetryViaBroker(0.5)),
        (FLAT, 3, None, "ack-timeout", None, DeadLetter("retries-exhausted")),
        # A poison body is dead-lettered at once, even with attempts left.
        (FLAT, 1, ValueError(), "undecodable", None, DeadLetter("undecodable")),
        # A failure outside the handler spends an attempt but is retried whatever retry_on
        # says: it tells nothing about the message.
        (PICKY, 1, KeyError(), "internal", None, RetryInProcess(0.5)),
        (PICKY, 3, KeyError(), "internal", None, DeadLetter("retries-exhausted")),
    ],
)
def test_decide(
    policy: RetryPolicy,
    attempt: int,
    error: BaseException | None,
    how: Failure,
    delay: float | None,
    expected: Outcome,
) -> None:
    assert decide(policy, attempt, error, how, delay=delay) == expected


def test_a_broadcast_retries_in_process_even_via_broker() -> None:
    # No group to send a retry to: the key lane waits instead.
    assert decide(BROKER, 1, ValueError(), "raised", broadcast=True) == RetryInProcess(0.5)
    # A nack still goes back through the broker (the transport requeues it).
    assert decide(BROKER, 1, None, "nacked", broadcast=True) == RetryViaBroker(0.5)


def test_backoff_with_jitter_draws_below_the_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=1, max_delay=4)
    rng = random.Random(7)
    for attempt in range(1, 9):
        outcome = decide(policy, attempt, ValueError(), "raised", rng=rng)
        assert isinstance(outcome, RetryInProcess)
        assert 0 <= outcome.delay <= min(4, 2 ** (attempt - 1))


def test_a_huge_attempt_count_does_not_overflow_the_backoff() -> None:
    # A foreign producer may write any eventbus-attempt; the policy's cap still applies.
    policy = RetryPolicy(max_attempts=10**9, initial_delay=1, max_delay=4, jitter=False)
    assert decide(policy, 10**6, ValueError(), "raised") == RetryInProcess(4)


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), -1.0])
def test_a_retry_delay_that_never_comes_is_refused(delay: float) -> None:
    # Raised inside a handler, the ValueError is then a failed attempt like any other.
    with pytest.raises(ValueError, match="Retry delay"):
        Retry(delay=delay)
