"""The helpers every adapter shares: URL options, secrets out of URLs, CloudEvents time, the
size check and the per-message PublishError, backoff, and the access-refused exit code."""

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventbus import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    Message,
    MessageTooLargeError,
    PublishError,
    UnroutableError,
)
from eventbus.backoff import Backoff
from eventbus.cli import _exit_code
from eventbus.transports.cloudevents import format_time, parse_time
from eventbus.transports.publishing import publish_error, too_large
from eventbus.transports.urls import censor_url, choice, parse_options, positive_int, seconds

TABLE = {"partitions": positive_int, "timeout": seconds, "mode": choice("fast", "safe")}


def test_parse_options_parses_known_and_passes_the_drivers_through() -> None:
    values, passed = parse_options(
        "x", "partitions=3&timeout=1.5&heartbeat=5", TABLE, {"heartbeat"}
    )
    assert values == {"partitions": 3, "timeout": 1.5}
    assert passed == [("heartbeat", "5")]


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("partitions=0", "partitions='0': expected an integer >= 1"),
        ("partitions=x", "expected an integer >= 1"),
        ("timeout=inf", "expected seconds"),
        ("timeout=nan", "expected seconds"),
        ("timeout=-1", "expected seconds"),
        ("mode=slow", "expected one of fast, safe"),
        ("partitions=1&partitions=2", "given twice"),
        ("partitoins=1", "unknown x URL option 'partitoins'; known options: mode, partitions"),
    ],
)
def test_parse_options_says_what_is_wrong(query: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_options("x", query, TABLE)


def test_censor_url_hides_passwords_and_secret_options() -> None:
    url = "amqp://app:s3cr3t@host:5672/vh?sasl_password=p4ss&heartbeat=5&token=t0k"
    shown = censor_url(url)
    assert "s3cr3t" not in shown and "p4ss" not in shown and "t0k" not in shown
    assert shown.startswith("amqp://app:***@host:5672/vh?") and "heartbeat=5" in shown
    assert censor_url("kafka://h:9092") == "kafka://h:9092"


def test_cloudevents_time_round_trips_and_never_raises() -> None:
    moment = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-12-01T10:00:00.123456Z"
    assert parse_time(format_time(moment)) == moment
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus_two) == "2026-12-01T10:00:00.123456Z"
    assert parse_time("2026-12-01T12:00:00+02:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    for junk in ("yesterday", "", "9999-12-31T23:59:59-23:59", "\udcff"):
        parse_time(junk)  # None or a time, never an exception


def test_size_check_and_publish_error_say_what_failed() -> None:
    small = Message(id="a", topic="t", body=b"x" * 10)
    big = Message(id="b", topic="t", body=b"x" * 11)
    assert too_large(small, 10, "Kafka") is None and too_large(big, None, "Kafka") is None
    error = too_large(big, 10, "Kafka")
    assert isinstance(error, MessageTooLargeError) and "11 bytes" in str(error)

    sized = publish_error({1: error}, [small, big], "topic 't'")
    assert type(sized) is MessageTooLargeError and sized.failures == {1: error}
    assert "1 of 2 messages" in str(sized) and sized.__cause__ is error
    mixed = publish_error({0: UnroutableError("nowhere"), 1: error}, [small, big], "topic 't'")
    assert type(mixed) is PublishError and set(mixed.failures) == {0, 1}
    alone = publish_error({0: UnroutableError("nowhere")}, [small], "topic 't'")
    assert type(alone) is UnroutableError and "nowhere" in str(alone)


def test_backoff_grows_caps_and_resets_only_after_staying_up() -> None:
    backoff = Backoff(0.1, 2.0, stable_after=60, rng=random.Random(1))
    waits = [backoff.next() for _ in range(8)]
    assert all(0.05 <= w <= 0.1 for w in waits[:1]) and all(w <= 2.0 for w in waits)
    assert waits[-1] >= 1.0, "capped, not reset"
    backoff.up()  # up again, but it dies at once: no reset, still backing off
    assert backoff.next() >= 1.0
    backoff.up()
    backoff._up_since = 0.0  # up since long ago (monotonic time 0)
    assert backoff.next() <= 0.1


def test_access_refused_exits_6() -> None:
    assert _exit_code(AuthenticationError("bad password")) == 6
    assert _exit_code(AuthorizationError("ACL")) == 6
    assert _exit_code(ConfigurationError("bad url")) == 4
    assert isinstance(AuthenticationError("x"), PermissionError)
    assert isinstance(AuthorizationError("x"), ConfigurationError)
