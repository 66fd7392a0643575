"""eventbus's loggers escape what is not printable in the lines they render, and leave every
other record exactly as it was logged (format and arguments)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

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


def test_eventbus_and_its_adapters_log_only_through_get_logger() -> None:
    """A logger's filters do not see its children's records, so each module's logger must
    come from `get_logger`: a plain ``logging.getLogger`` would log foreign text unescaped."""
    root = Path(__file__).parents[2]
    sources = [*root.glob("src/eventbus/**/*.py"), *root.glob("adapters/*/src/**/*.py")]
    assert len(sources) > 100
    plain = re.compile(r"\blogging\.getLogger\((?!\)|\"watchfiles\")")  # root, not ours
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if plain.search(line) and path.name != "loggers.py"
    ]
    assert not offenders, offenders
