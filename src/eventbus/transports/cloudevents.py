"""CloudEvents attributes every transport writes the same way (DESIGN 4)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["SOURCE", "SPEC_VERSION", "format_time", "parse_time"]

SPEC_VERSION = "1.0"
SOURCE = "eventbus"

_last_time: tuple[datetime | None, str] = (None, "")
"""The last `format_time` result: the messages of one ``publish_many`` share a timestamp."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as CloudEvents writers usually emit it. A naive time is
    taken as UTC."""
    global _last_time
    last = _last_time  # one read: another thread may replace it, never tear it
    if last[0] == moment:  # the same instant: the same text (a naive one never equals an aware)
        return last[1]
    if moment.tzinfo is None:
        utc = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        utc = moment.astimezone(UTC)
    else:
        utc = moment
    # isoformat of a UTC datetime always ends with "+00:00"
    text = utc.isoformat(timespec="microseconds")[:-6] + "Z"
    _last_time = (moment, text)
    return text


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time as an aware UTC datetime; None if it is not one (a foreign
    producer's header must never fail a delivery)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, TypeError):
        return None
    if moment.tzinfo is UTC:  # what eventbus writes ("Z"): nothing to convert
        return moment
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (OverflowError, ValueError):  # out of range once converted
        return None
