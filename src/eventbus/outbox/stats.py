"""`RelayStats`: what a relay loop has done and seen, for `OutboxRelay.stats` and the gauges."""

from __future__ import annotations

from dataclasses import dataclass

from eventbus.outbox.base import OutboxBacklog

__all__ = ["RelayStats", "relay_backlog"]


@dataclass(slots=True)
class RelayStats:
    """What one outbox's relay loop has done and seen (read by the metrics collector)."""

    table: str
    relayed: int = 0
    """Rows published and marked sent by this process."""
    failures: int = 0
    """Rounds that failed (the database or the broker) and were tried again."""
    backlog: OutboxBacklog | None = None
    """The last backlog read (every ``backlog_interval`` seconds); None before the first."""


def relay_backlog(stats: RelayStats) -> tuple[int, float, int]:
    """(unsent rows, oldest unsent age, failed rows) of the last read, zeros before the
    first."""
    backlog = stats.backlog
    if backlog is None:
        return (0, 0.0, 0)
    return (backlog.unsent, backlog.oldest_age, backlog.failed)
