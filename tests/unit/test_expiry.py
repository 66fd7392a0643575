"""Message expiry (DESIGN 11): ``publish(..., ttl=)`` / ``expires_at=`` write
``eventbus-expires-at``; the consumer checks it before each attempt and dead-letters (``expired``)
or drops what has expired. Replay strips it."""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from eventbus import ConfigurationError, Delivery, EventBus, Message, RetryPolicy
from eventbus import headers as h
from eventbus.dispatch.expiry import ExpiryHeaderError, expired, expiry_header
from eventbus.dlq import dlq_replay, replay_destination
from eventbus.testing import MemoryBroker, TestBus
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport


def test_ttl_header_is_unix_seconds_from_now() -> None:
    value = expiry_header(2.0, None)
    assert value is not None
    assert abs(float(value) - (time.time() + 2.0)) < 0.5
    assert expiry_header(None, None) is None


def test_expires_at_header_is_the_datetime_as_unix_seconds() -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
    assert expiry_header(None, at) == f"{at.timestamp():.3f}"
    other_zone = at.astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    assert expiry_header(None, other_zone) == expiry_header(None, at)


@pytest.mark.parametrize(
    ("ttl", "expires_at", "match"),
    [
        (0, None, "ttl"),
        (-1.0, None, "ttl"),
        (float("inf"), None, "ttl"),
        (float("nan"), None, "ttl"),
        (True, None, "ttl"),
        (None, datetime(2030, 1, 1), "aware"),  # naive
        (1.0, datetime(2030, 1, 1, tzinfo=UTC), "not both"),
        (None, "2030-01-01", "datetime"),
    ],
)
async def test_bad_expiry_refused_before_anything_is_sent(
    make_bus: Callable[..., EventBus],
    broker: MemoryBroker,
    ttl: object,
    expires_at: object,
    match: str,
) -> None:
    bus = make_bus()
    async with bus:
        for call in (
            lambda: bus.publish("t", "x", ttl=ttl, expires_at=expires_at),  # type: ignore[arg-type]
            lambda: bus.send("q", "x", ttl=ttl, expires_at=expires_at),  # type: ignore[arg-type]
            lambda: bus.publish_many("t", ["x"], ttl=ttl, expires_at=expires_at),  # type: ignore[arg-type]
        ):
            with pytest.raises(ConfigurationError, match=match):
                await call()
    assert list(broker.log) == []


def test_expired_reads_the_header() -> None:
    now = 1_000.0
    assert expired({}, now) is None
    assert expired({h.EXPIRES_AT: "1000.5"}, now) is None
    assert expired({h.EXPIRES_AT: "999.5"}, now) == 999.5
    assert expired({h.EXPIRES_AT: "1000"}, now) == 1000.0, "the deadline itself is expired"
    for bad in ("soon", "", "nan", "inf", "-inf", "2030-01-01T00:00:00Z"):
        with pytest.raises(ExpiryHeaderError):
            expired({h.EXPIRES_AT: bad}, now)


def test_on_expired_validated(make_bus: Callable[..., EventBus]) -> None:
    with pytest.raises(ConfigurationError, match="on_expired"):
        make_bus().consume("q", on_expired="ignore")  # type: ignore[arg-type]


async def test_ttl_not_expired_early(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    seen: list[Message] = []

    @bus.consume("jobs")
    async def handler(message: Message) -> None:
        seen.append(message)

    async with bus:
        await bus.send("jobs", "x", ttl=2)
        await bus.publish_many("other", ["y"], ttl=2)  # nobody listens; just accepted
        await wait_for(lambda: len(seen) == 1)
    stats = bus.subscribers[0].stats
    assert stats.handled == 1 and stats.expired == 0 and stats.dead_lettered == 0
    assert h.EXPIRES_AT in seen[0].headers


async def _publish_expired(
    url: str, name: str, kind: str, message_id: str, **expiry: object
) -> None:
    """Publish with an expiry from a bus without handlers, so the message waits in the broker."""
    publisher = EventBus(url)
    async with publisher.publisher():
        if kind == "queue":
            await publisher.send(name, "stale", message_id=message_id, **expiry)  # type: ignore[arg-type]
        else:
            await publisher.publish(name, "stale", message_id=message_id, **expiry)  # type: ignore[arg-type]


async def test_expired_before_the_consumer_started_is_dead_lettered(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, url: str
) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.subscribe("orders", group="billing")
    async def handler(body: str) -> None:
        calls.append(body)

    async with bus:  # create the group, then stop so the message waits
        pass
    await _publish_expired(url, "orders", "topic", "late-1", ttl=0.05)
    await _publish_expired(
        url, "orders", "topic", "past-1", expires_at=datetime.now(UTC) - timedelta(days=1)
    )
    await anyio.sleep(0.1)
    async with bus:
        await bus.publish("orders", "fresh", ttl=60)
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 2 and calls == ["fresh"])
    stats = bus.subscribers[0].stats
    assert calls == ["fresh"]
    assert stats.expired == 2 and stats.dead_letter_reasons == {"expired": 2}
    assert stats.failed_attempts == 0 and stats.handled == 1
    letters = broker.published("orders.billing.dlq")
    assert [m.id for m in letters] == ["late-1", "past-1"]
    for letter in letters:
        assert letter.headers[h.DLQ_REASON] == "expired"
        assert letter.headers[h.ERROR_TYPE] == "eventbus.dispatch.expiry.ExpiredError"
        assert letter.headers[h.ATTEMPTS] == "1"
        assert h.EXPIRES_AT not in letter.headers, "a dead letter does not expire in its queue"
        assert float(letter.headers[h.ORIGINAL_EXPIRES_AT]) < time.time()


async def test_on_expired_drop_acks_and_counts(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, url: str
) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.consume("jobs", on_expired="drop")
    async def handler(body: str) -> None:
        calls.append(body)

    await _publish_expired(url, "jobs", "queue", "late-1", ttl=0.01)
    await anyio.sleep(0.05)
    async with bus:
        await bus.send("jobs", "fresh")
        await wait_for(lambda: calls == ["fresh"])
        await wait_for(lambda: bus.subscribers[0].stats.expired == 1)
    stats = bus.subscribers[0].stats
    assert stats.dead_lettered == 0 and stats.handled == 1
    assert broker.published("jobs.dlq") == []
    assert broker.ready("jobs") == [], "acked, not left behind"


async def test_in_process_retries_check_again(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """A message that expires while its first attempts fail is not tried again."""
    bus = make_bus()
    attempts: list[int] = []

    @bus.consume("jobs", retry=RetryPolicy(max_attempts=10, initial_delay=0.2, jitter=False))
    async def handler(body: str, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("down")

    async with bus:
        await bus.send("jobs", "x", ttl=0.3, message_id="m-1")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=10)
    assert attempts == [1, 2], "the third attempt (after 0.2 + 0.4 s) is past the ttl"
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.DLQ_REASON] == "expired"
    assert letter.headers[h.ATTEMPTS] == "3", "the attempt that did not run"


async def test_redeliveries_through_the_broker_check_again(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    attempts: list[int] = []

    @bus.consume(
        "jobs", retry=RetryPolicy(max_attempts=10, initial_delay=0.3, jitter=False, via_broker=True)
    )
    async def handler(body: str, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("down")

    async with bus:
        await bus.send("jobs", "x", ttl=0.2)
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=10)
    assert attempts == [1]
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.DLQ_REASON] == "expired"
    assert h.ORIGINAL_EXPIRES_AT in letter.headers


async def test_malformed_expiry_header_is_dead_lettered_as_undecodable(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, url: str
) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.consume("jobs")
    async def handler(body: str) -> None:
        calls.append(body)

    transport = MemoryTransport(url)
    await transport.connect()
    foreign = Message(id="bad-1", topic="jobs", body=b'"x"', headers={h.EXPIRES_AT: "tomorrow"})
    await transport.publish(Destination("jobs", "queue"), [foreign])
    await transport.close()
    async with bus:
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1)
    assert calls == []
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.DLQ_REASON] == "undecodable"
    assert letter.headers[h.ERROR_TYPE] == "eventbus.dispatch.expiry.ExpiryHeaderError"


async def test_replay_strips_the_expiry_and_the_message_is_handled(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, url: str
) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.consume("jobs")
    async def handler(body: str) -> None:
        calls.append(body)

    await _publish_expired(url, "jobs", "queue", "late-1", ttl=0.01)
    await anyio.sleep(0.05)
    async with bus:
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1)
    [letter] = broker.published("jobs.dlq")
    _, original = replay_destination(letter)
    assert h.EXPIRES_AT not in original.headers
    assert h.ORIGINAL_EXPIRES_AT not in original.headers

    transport = MemoryTransport(url)
    await transport.connect()
    try:
        assert await dlq_replay(transport, "jobs.dlq", idle=0.5) == 1
    finally:
        await transport.close()
    async with bus:
        await wait_for(lambda: calls == ["stale"])


async def test_a_dead_letter_queue_consumer_handles_an_expired_letter(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, url: str
) -> None:
    bus = make_bus()
    parked: list[Message] = []

    @bus.consume("jobs")
    async def handler(body: str) -> None:
        raise AssertionError("not called for an expired message")

    @bus.consume("jobs.dlq")
    async def dead_letters(message: Message) -> None:
        parked.append(message)

    await _publish_expired(url, "jobs", "queue", "late-1", ttl=0.01)
    await anyio.sleep(0.05)
    async with bus:
        await wait_for(lambda: len(parked) == 1)
    assert parked[0].id == "late-1" and parked[0].headers[h.DLQ_REASON] == "expired"
    assert bus.subscribers[1].stats.expired == 0
    assert broker.published("jobs.dlq.dlq") == []


async def test_testbus_reports_expired_outcomes(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.consume("kept")
    async def kept(body: str) -> None:
        calls.append(body)

    @bus.consume("dropped", on_expired="drop")
    async def dropped(body: str) -> None:
        calls.append(body)

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with TestBus(bus) as client:
        dead = await client.send("kept", "x", expires_at=past)
        gone = await client.send("dropped", "y", expires_at=past)
        live = await client.send("dropped", "z", ttl=60)
    assert dead.status == "dead-lettered" and dead.reason == "expired"
    assert gone.status == "expired"
    assert live.status == "handled"
    assert calls == ["z"]
