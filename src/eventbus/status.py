"""``eventbus status``: what waits for each group and queue, its dead letters and consumers,
read from the broker (`Transport.backlog`, `Transport.depth`) by any process, as a table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from eventbus.transports.base import Kind, SubscriptionSpec, Transport

__all__ = ["Target", "TargetStatus", "gather", "render"]

_PARTITIONS_SHOWN = 8
"""Partitions listed by name in the table; the others are summed up."""


@dataclass(frozen=True, slots=True)
class Target:
    """A group of a topic, or a queue, to report on."""

    kind: Kind
    name: str
    group: str | None = None
    handler: str | None = None
    dead_letter: str | None = None

    @property
    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(name=self.name, kind=self.kind, group=self.group, prefetch=1)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    target: Target
    waiting: dict[str, int] | None
    """Per partition (Kafka lag) or queue (RabbitMQ ready messages); None: does not exist."""
    consumers: int | None
    dead_letters: int | None


async def gather(transport: Transport, targets: Sequence[Target]) -> list[TargetStatus]:
    """Ask the broker about every target (the transport must be connected)."""
    found: list[TargetStatus] = []
    for target in targets:
        backlog = await transport.backlog(target.spec)
        letters = await transport.depth(target.dead_letter, "queue") if target.dead_letter else None
        found.append(
            TargetStatus(
                target,
                dict(backlog.waiting) if backlog is not None else None,
                backlog.consumers if backlog is not None else None,
                letters,
            )
        )
    return found


def render(statuses: Sequence[TargetStatus], *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("topic / queue")
    table.add_column("group")
    table.add_column("handler")
    table.add_column("waiting", justify="right")
    table.add_column("by partition")
    table.add_column("consumers", justify="right")
    table.add_column("dead letters", justify="right")
    for s in statuses:
        t = s.target
        name = t.name if t.kind == "topic" else f"{t.name} (queue)"
        if s.waiting is None:
            waiting, parts = "[dim]missing[/dim]", ""
        else:
            total = sum(s.waiting.values())
            waiting = f"[bold red]{total}[/bold red]" if total else "0"
            parts = _partitions(t, s.waiting)
        table.add_row(
            name,
            t.group or "",
            t.handler or "",
            waiting,
            parts,
            "-" if s.consumers is None else str(s.consumers),
            _letters(t, s.dead_letters),
        )
    return table


def _partitions(target: Target, waiting: dict[str, int]) -> str:
    if len(waiting) <= 1:
        return ""
    # RabbitMQ names a partition by its queue, "<topic>.<group>.<i>": the "<i>" says enough.
    prefix = f"{target.name}.{target.group}."
    behind = [(p.removeprefix(prefix), n) for p, n in waiting.items() if n]
    shown = " ".join(f"{p}={n}" for p, n in behind[:_PARTITIONS_SHOWN])
    rest = len(behind) - _PARTITIONS_SHOWN
    if rest > 0:
        shown += f" +{rest} more ({sum(n for _, n in behind[_PARTITIONS_SHOWN:])})"
    return shown or f"all {len(waiting)} at 0"


def _letters(target: Target, depth: int | None) -> str:
    if target.dead_letter is None:
        return "-"
    if depth is None:
        return "0"  # no dead letter queue yet: nothing was ever dead-lettered
    return f"[bold red]{depth}[/bold red]" if depth else "0"
