"""What a dead letter carries (DESIGN 3.4): the original body and headers plus why it failed."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from eventbus import headers as h
from eventbus.message import Message

__all__ = ["DeadLetterReason", "dead_letter_message", "default_dead_letter_name"]

DeadLetterReason = Literal["rejected", "retries-exhausted", "undecodable"]

TRACEBACK_LIMIT = 4000
"""Characters of traceback kept: enough to find the line, small enough for any broker."""


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
        added[h.ERROR_MESSAGE] = str(error)[:1000]
        tb = "".join(traceback.format_exception(error))
        added[h.ERROR_TRACEBACK] = tb[-TRACEBACK_LIMIT:]
    for name, value in native.items():
        added[f"eventbus-original-{name}"] = value
    return message.replace_headers({**message.headers, **added})
