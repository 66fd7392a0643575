"""Scheduled publish (DESIGN 11): ``delay=`` / ``at=`` turned into `Destination.not_before`.

The due time is computed once, when `publish` is called, as an absolute Unix time: a publish
that then waits (a reconnect, a retried confirm) never pushes it further out, and each broker
hop of a long delay only compares it with the clock. A message is never delivered before it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

from eventbus.errors import ConfigurationError

__all__ = ["not_before"]


def not_before(delay: float | None, at: datetime | None) -> float | None:
    """The Unix time before which the message must not be delivered, or None for at once.

    ``delay``: seconds from now, finite and not negative. ``at``: an aware datetime; a time in
    the past means at once. Not both."""
    if delay is not None and at is not None:
        raise ConfigurationError("give delay= or at=, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise ConfigurationError(f"delay must be a number of seconds, not {delay!r}")
        if not math.isfinite(delay) or delay < 0:
            raise ConfigurationError(f"delay must be a finite number of seconds >= 0, not {delay}")
        return time.time() + delay if delay > 0 else None
    if at is not None:
        if not isinstance(at, datetime):
            raise ConfigurationError(f"at must be a datetime, not {at!r}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigurationError(
                "at must be an aware datetime (a naive one has no defined instant): "
                "use datetime.now(UTC) + timedelta(...) or give it a tzinfo"
            )
        due = at.timestamp()
        return due if due > time.time() else None
    return None
