"""The loggers eventbus and its adapters write through.

Log lines carry what foreign producers wrote: message ids, header values, reply-to names. A
newline or a terminal escape in one of them would forge a line, or rewrite the terminal, for
whoever reads the log. So every logger made here escapes the characters that are not printable
(``\\n`` as ``\\\\n``, ESC as ``\\\\x1b``) in the message it renders; a message that is all
printable, which is every message without foreign control characters, is left untouched. Only
what eventbus logs is escaped: tracebacks, and other libraries' lines, are as they were."""

from __future__ import annotations

import logging

__all__ = ["get_logger"]


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, escaping non-printable characters in what it logs."""
    logger = logging.getLogger(name)
    if _escape_unprintable not in logger.filters:
        logger.addFilter(_escape_unprintable)
    return logger


def _escape_unprintable(record: logging.LogRecord) -> bool:
    # Renders every record that passes the logger's level, so a printed one is rendered twice
    # (about 2 us more a record): nothing on a hot path logs unless DEBUG is on.
    try:
        message = record.getMessage()
    except Exception:  # the handler reports a bad format, as without this filter
        return True
    if not message.isprintable():
        record.msg = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message
        )
        record.args = None
    return True
