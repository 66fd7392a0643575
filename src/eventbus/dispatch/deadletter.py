"""What a dead letter carries (DESIGN 3.4): the original body and headers plus why it failed."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal

from eventbus import headers as h
from eventbus.message import Message

__all__ = ["DeadLetterReason", "dead_letter_message", "default_dead_letter_name"]

DeadLetterReason = Literal["rejected", "retries-exhausted", "undecodable", "expired"]
"""``expired``: past its ``eventbus-expires-at`` before an attempt could start (DESIGN 11)."""

TRACEBACK_LIMIT = 4000
"""Characters of traceback kept: enough to find the line, small enough for any broker."""
MESSAGE_LIMIT = 1000
"""Characters of the error message kept."""
HEADER_LIMIT = 16_000
"""Characters kept of each original header: a dead letter must fit where the message did."""


def default_dead_letter_name(name: str, kind: str, group: str | None) -> str:
    if kind == "queue":
        return f"{name}.dlq"
    return f"{name}.{group}.dlq" if group else f"{name}.broadcast.dlq"


def dead_letter_message(
    message: Message,
    *,
    reason: DeadLetterReason,
    error: BaseException | None,
    kind: str,
    group: str | None,
    attempts: int,
    native: Mapping[str, str],
) -> Message:
    """The original message, body untouched, with the ``eventbus-*`` dead-letter headers."""
    added = {
        h.DLQ_REASON: reason,
        h.ORIGINAL_TOPIC: message.topic,
        h.ORIGINAL_GROUP: group or "",
        h.ORIGINAL_KIND: kind,
        h.ATTEMPTS: str(attempts),
        h.FAILED_AT: datetime.now(UTC).isoformat(),
    }
    if error is not None:
        added[h.ERROR_TYPE] = f"{type(error).__module__}.{type(error).__qualname__}"
        added[h.ERROR_MESSAGE] = _described(str, error)[:MESSAGE_LIMIT]
        tb = _described(lambda e: "".join(traceback.format_exception(e)), error)
        added[h.ERROR_TRACEBACK] = tb[-TRACEBACK_LIMIT:]
    for name, value in native.items():
        added[f"eventbus-original-{name}"] = value
    # Every value must reach the broker: a dead letter that cannot be encoded never gets out.
    headers = {_encodable(k): _encodable(v)[:HEADER_LIMIT] for k, v in message.headers.items()}
    expires = headers.pop(h.EXPIRES_AT, None)
    if expires is not None:
        # Kept for the record only: a dead letter must not expire in its own queue, or whoever
        # reads it would dead-letter it again instead of seeing it (DESIGN 11).
        added[h.ORIGINAL_EXPIRES_AT] = expires
    headers.update((k, _encodable(v)) for k, v in added.items())
    return message.replace_headers(headers)


def _described(describe: Callable[[BaseException], str], error: BaseException) -> str:
    """``describe(error)``, or a stand-in when the error's own ``__str__`` raises."""
    try:
        return describe(error)
    except Exception as exc:
        return f"<{type(error).__qualname__}: cannot be shown ({type(exc).__qualname__})>"


def _encodable(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates (a file name read with ``surrogateescape``,
    say) become U+FFFD, which every broker's header encoding accepts."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
