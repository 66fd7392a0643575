"""eventbus's loggers escape what is not printable in the lines they render, and leave every
other record exactly as it was logged (format and arguments)."""

from __future__ import annotations

import logging

import pytest

from eventbus.loggers import get_logger


def test_control_characters_in_arguments_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("eventbus.test-loggers")
    with caplog.at_level(logging.INFO, logger="eventbus.test-loggers"):
        log.warning("dropping %s (%s)", "m1\r\nINFO forged\x1b[0m", "tab\there\u200b")
        log.info("handled %s in %d ms", "m2", 3)
    escaped, plain = caplog.records
    assert escaped.getMessage() == "dropping m1\\r\\nINFO forged\\x1b[0m (tab\\there\\u200b)"
    assert (plain.msg, plain.args) == ("handled %s in %d ms", ("m2", 3)), "left as logged"


def test_a_bad_format_still_reaches_the_handler() -> None:
    """Logging reports a bad format in the handler; the filter lets the record through."""
    log = get_logger("eventbus.test-loggers")
    record = log.makeRecord(log.name, logging.INFO, "", 0, "%d items", ("x",), None)
    assert log.filter(record)
    assert (record.msg, record.args) == ("%d items", ("x",))


def test_the_filter_is_added_once() -> None:
    first = get_logger("eventbus.test-loggers-once")
    assert get_logger("eventbus.test-loggers-once") is first
    assert len(first.filters) == 1
