"""How the ``eventbus`` command logs.

The ``--log-format json`` formatter: one JSON object a line, tagged with the message being
handled (id, topic or queue, group, handler, attempt) and the current trace id, so a log
pipeline can follow one message across workers without parsing text. And the filter that
keeps the broker client libraries' own lines at DEBUG."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from eventbus.dispatch.current import HANDLING

__all__ = ["CLIENT_LIBRARIES", "JsonFormatter", "quiet_client_libraries"]

CLIENT_LIBRARIES = ("aiokafka", "aiormq", "pamqp")


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


class _ClientLibraryFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.name.partition(".")[0] in CLIENT_LIBRARIES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_QUIET = _ClientLibraryFilter()


def quiet_client_libraries(handler: logging.Handler) -> None:
    """Log the client libraries' records (aiokafka, aiormq) through ``handler`` as DEBUG.

    They log an error for each connection attempt that fails while the adapters retry, so an
    unreachable broker printed pages before the one line that says so. The adapters translate
    what matters into eventbus's own exceptions and log lines; ``--log-level debug`` still
    shows the libraries' lines. Idempotent."""
    handler.addFilter(_QUIET)
