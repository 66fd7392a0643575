"""The ledger of one scenario: what was published, handled, lost, duplicated, dead-lettered,
and handled out of order -- computed from the rows the workers wrote and what the publisher and
the dead-letter queues saw. Pure functions: `tests/reliability/test_rel_units.py` checks them.

Definitions (docs/reliability.md repeats them):

- **confirmed**: the broker confirmed the publish. Only confirmed messages count below.
- **handled** (alo): a confirmed good message with at least one invocation that returned.
  (eo): a confirmed good message with an effect row.
- **lost**: a confirmed message neither handled nor in its group's dead-letter queue.
- **duplicate invocations**: invocations beyond the first per message id (reported).
- **duplicate effects** (eo): effect rows beyond the first per message id (must be 0).
- **dead-lettered**: distinct poison ids in the group's DLQ (must equal the poison count);
  extra copies of the same dead letter are reported as ``dlq copies``; a good message in the
  DLQ is an ``unexpected dead letter`` (must be 0).
- **order violations** (per key, publish order = ``seq``). eo: walking a key's effects in
  commit order, an effect whose seq is lower than one already committed. alo: walking a key's
  *first* invocations in start order, a message first started after a later message of its
  key had started. A redelivery of an already-invoked message is a duplicate, never an order
  violation: at-least-once allows it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS rel_invocations (
    pos bigserial PRIMARY KEY,
    run text NOT NULL,
    grp text NOT NULL,
    id text NOT NULL,
    key text NOT NULL,
    seq integer NOT NULL,
    pid integer NOT NULL,
    attempt integer NOT NULL,
    redelivered boolean NOT NULL,
    done boolean NOT NULL DEFAULT false,
    inv text,
    done_at timestamptz,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS rel_invocations_run_idx ON rel_invocations (run, grp);
CREATE INDEX IF NOT EXISTS rel_invocations_inv_idx ON rel_invocations (inv);
CREATE TABLE IF NOT EXISTS rel_effects (
    pos bigserial PRIMARY KEY,
    run text NOT NULL,
    id text NOT NULL,
    key text NOT NULL,
    seq integer NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS rel_effects_run_idx ON rel_effects (run);
"""
"""Created once per test session (``CREATE ... IF NOT EXISTS``: safe in parallel)."""


@dataclass(frozen=True, slots=True)
class Published:
    id: str
    key: str
    seq: int
    poison: bool


@dataclass(frozen=True, slots=True)
class Invocation:
    pos: int
    id: str
    key: str
    seq: int
    pid: int
    done: bool
    at: float = 0.0
    """When it started (epoch seconds, the database's clock)."""
    done_at: float | None = None
    """When the handler was about to return; None if it never did (killed)."""


@dataclass(frozen=True, slots=True)
class Effect:
    pos: int
    id: str
    key: str
    seq: int


@dataclass(slots=True)
class GroupLedger:
    group: str
    handled: int = 0
    lost: int = 0
    invocations: int = 0
    duplicate_invocations: int = 0
    effects: int | None = None
    duplicate_effects: int | None = None
    dead_lettered: int = 0
    dlq_copies: int = 0
    unexpected_dead_letters: int = 0
    order_violations: int = 0
    key_overlaps: int = 0
    """Invocations that started while another invocation of the same key was still running
    (DESIGN 3.5: one at a time per key within a group). Reported."""
    unknown_ids: int = 0
    """Invoked or dead-lettered ids the publisher never had confirmed (should stay 0)."""
    lost_sample: list[str] = field(default_factory=list)
    order_sample: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Ledger:
    scenario: str
    broker: str
    published: int
    confirmed: int
    poison: int
    publish_retries: int
    groups: list[GroupLedger]
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific checks, e.g. ``redone_after_drain``."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def problems(self, *, check_overlaps: bool = True) -> list[str]:
        """What breaks the contract; empty when the scenario passed. ``check_overlaps``: the
        scenario only changes membership in an orderly way (joins, leaves, kills), so no key
        may be handled by two processes at once; under connection loss a cut-off worker cannot
        know at once that its deliveries moved on, and overlaps are only reported."""
        found: list[str] = []
        if self.confirmed != self.published:
            found.append(f"only {self.confirmed} of {self.published} publishes confirmed")
        for g in self.groups:
            where = f"group {g.group}"
            if g.lost:
                found.append(f"{where}: {g.lost} lost, e.g. {g.lost_sample[:5]}")
            if g.duplicate_effects:
                found.append(f"{where}: {g.duplicate_effects} duplicate effects")
            if g.dead_lettered != self.poison:
                found.append(f"{where}: {g.dead_lettered} dead-lettered, {self.poison} poison")
            if g.unexpected_dead_letters:
                found.append(f"{where}: {g.unexpected_dead_letters} good messages dead-lettered")
            if g.unknown_ids:
                found.append(f"{where}: {g.unknown_ids} ids never published")
            if g.order_violations:
                found.append(
                    f"{where}: {g.order_violations} order violations, e.g. {g.order_sample[:5]}"
                )
            if check_overlaps and g.key_overlaps:
                found.append(f"{where}: {g.key_overlaps} invocations overlapped one of their key")
        for name, value in self.extra.items():
            if name.startswith("must_be_zero:") and value:
                found.append(f"{name.removeprefix('must_be_zero:')} = {value}")
        return found


def late_in_order(items: Iterable[tuple[int, str, int]]) -> tuple[int, list[str]]:
    """Order violations among ``(position, key, seq)`` items: per key, walking positions in
    order, an item whose seq is lower than the highest seq seen before it. Returns the count and
    a few examples ``key: seq after max``."""
    highest: dict[str, int] = {}
    count, sample = 0, []
    for _, key, seq in sorted(items):
        top = highest.get(key)
        if top is not None and seq < top:
            count += 1
            if len(sample) < 10:
                sample.append(f"{key}: {seq} after {top}")
        else:
            highest[key] = seq
    return count, sample


def overlapping(invocations: Iterable[Invocation]) -> int:
    """Invocations that started while another of the same key was still running. Start and
    end times are recorded by the database when the rows are written, which is after the real
    start and end, yet in a key's lane the next start is written only after the previous end
    was: an overlap seen here is real (killed invocations, with no end, are left out)."""
    by_key: dict[str, list[Invocation]] = {}
    for inv in invocations:
        by_key.setdefault(inv.key, []).append(inv)
    count = 0
    for runs in by_key.values():
        running_until = float("-inf")
        for inv in sorted(runs, key=lambda i: i.at):
            if inv.at < running_until:
                count += 1
            if inv.done_at is not None:
                running_until = max(running_until, inv.done_at)
    return count


def group_ledger(
    group: str,
    published: Sequence[Published],
    invocations: Sequence[Invocation],
    effects: Sequence[Effect] | None,
    dead_letters: Sequence[str],
) -> GroupLedger:
    """The ledger of one group (see the module docstring for every definition)."""
    by_id = {p.id: p for p in published}
    poison = {p.id for p in published if p.poison}
    g = GroupLedger(group=group)

    invoked = Counter(i.id for i in invocations)
    g.key_overlaps = overlapping(invocations)
    g.invocations = len(invocations)
    g.duplicate_invocations = g.invocations - len(invoked)

    if effects is None:
        handled = {i.id for i in invocations if i.done}
        first: dict[str, Invocation] = {}
        for inv in sorted(invocations, key=lambda i: i.pos):
            first.setdefault(inv.id, inv)
        g.order_violations, g.order_sample = late_in_order(
            (i.pos, i.key, i.seq) for i in first.values()
        )
    else:
        effected = Counter(e.id for e in effects)
        handled = set(effected)
        g.effects = len(effects)
        g.duplicate_effects = g.effects - len(effected)
        g.order_violations, g.order_sample = late_in_order((e.pos, e.key, e.seq) for e in effects)

    letters = Counter(dead_letters)
    g.dlq_copies = sum(letters.values())
    g.dead_lettered = len(poison & set(letters))
    g.unexpected_dead_letters = sum(1 for i in letters if i in by_id and i not in poison)
    g.unknown_ids = len((set(invoked) | set(letters)) - set(by_id))
    g.handled = len(handled & (set(by_id) - poison))
    missing = [p.id for p in published if p.id not in handled and p.id not in letters]
    g.lost = len(missing)
    g.lost_sample = missing[:20]
    return g


def redone_after(invocations: Sequence[Invocation], pid: int, before_pos: int | None = None) -> int:
    """Messages whose handler returned in process ``pid`` (before ``before_pos`` if given)
    and that were invoked again later by anyone: after a graceful drain there must be none."""
    done_at: dict[str, int] = {}
    for inv in invocations:
        if inv.pid == pid and inv.done and (before_pos is None or inv.pos < before_pos):
            done_at[inv.id] = max(done_at.get(inv.id, 0), inv.pos)
    return len({i.id for i in invocations if i.id in done_at and i.pos > done_at[i.id]})


COLUMNS = (
    ("scenario", 18),
    ("broker", 8),
    ("group", 5),
    ("confirmed", 9),
    ("handled", 7),
    ("lost", 4),
    ("dup inv", 7),
    ("dup eff", 7),
    ("poison", 6),
    ("DLQ", 5),
    ("DLQ copies", 10),
    ("order viol", 10),
    ("key overlap", 11),
    ("secs", 5),
)


def table(ledgers: Iterable[Ledger]) -> str:
    """A Markdown table, one row per scenario and group (docs/reliability.md has one)."""
    rows = [[name for name, _ in COLUMNS]]
    for led in ledgers:
        for g in led.groups:
            rows.append(
                [
                    led.scenario,
                    led.broker,
                    g.group,
                    str(led.confirmed),
                    str(g.handled),
                    str(g.lost),
                    str(g.duplicate_invocations),
                    "-" if g.duplicate_effects is None else str(g.duplicate_effects),
                    str(led.poison),
                    str(g.dead_lettered),
                    str(g.dlq_copies),
                    str(g.order_violations),
                    str(g.key_overlaps),
                    f"{led.seconds:.0f}",
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def summary(ledger: Ledger) -> str:
    """The table plus the scenario's events and extra checks, for the test output."""
    parts = [
        f"== {ledger.scenario} on {ledger.broker}: published {ledger.published}, confirmed "
        f"{ledger.confirmed} ({ledger.poison} poison), publish retries {ledger.publish_retries}, "
        f"{ledger.seconds:.1f}s",
        table([ledger]),
    ]
    if ledger.events:
        parts.append("events: " + "; ".join(ledger.events))
    if ledger.extra:
        parts.append("checks: " + ", ".join(f"{k}={v}" for k, v in ledger.extra.items()))
    return "\n".join(parts)


def parse_rows(rows: Iterable[Mapping[str, Any]], kind: type[Any]) -> list[Any]:
    names = kind.__dataclass_fields__.keys()
    return [kind(**{n: row[n] for n in names}) for row in rows]
