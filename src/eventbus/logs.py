"""The ``--log-format json`` formatter: one JSON object a line, tagged with the message being
handled (id, topic or queue, group, handler, attempt) and the current trace id, so a log
pipeline can follow one message across workers without parsing text."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from eventbus.dispatch.current import HANDLING

__all__ = ["JsonFormatter"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        handling = HANDLING.get()
        if handling is not None:
            subscriber, state = handling
            entry["message_id"] = state.raw.message.id
            entry[subscriber.kind] = subscriber.name  # "topic" or "queue"
            if subscriber.group is not None:
                entry["group"] = subscriber.group
            entry["handler"] = subscriber.handler.name
            entry["attempt"] = state.attempt
        trace_id = _trace_id()
        if trace_id is not None:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _trace_id() -> str | None:
    """The current OpenTelemetry trace id, if OpenTelemetry is in use (never imported here)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
