"""Scheduled publish and expiry across a broker restart (DESIGN 11), shared by the Kafka and
RabbitMQ tests (imported by module name: tests are no package).

One restart of the broker (``scripts/brokers restart NAME``) serves two checks:

- **Scheduled publish.** A running worker publishes messages due 3 to 8 s later (``delay=`` and
  ``at=``, to a topic group and to a queue) and one due after the broker is usually back, then
  the broker restarts while they wait in the delay tiers. Every one is handled exactly once,
  none before its due time; lateness is printed.
- **Expiry.** Messages with a short ``ttl`` (they expire while the broker restarts) and a long
  one wait in a group's queue whose consumer is stopped; after the restart the consumer
  dead-letters every short one as ``expired``, handles none of them, and handles every long
  one before its expiry. A scheduled message whose ``ttl`` runs out while the restart holds it
  back is dead-lettered, never handled late; one whose ``ttl`` (counted from its due time)
  outlasts the restart is handled.

Restarts go through the ``scripts/brokers`` that runs the brokers: ``EVENTBUS_BROKERS_SCRIPT``
when set (the brokers belong to another checkout), else this checkout's.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from eventbus import EventBus, Message
from eventbus import headers as h

BROKERS = Path(
    os.environ.get("EVENTBUS_BROKERS_SCRIPT")
    or Path(__file__).resolve().parents[1] / "scripts" / "brokers"
)
"""The ``scripts/brokers`` that manages the running brokers (its state lives next to it)."""

RESOLUTION = 0.001
"""``eventbus-expires-at`` is written in milliseconds: a deadline read back may be up to half of
one before the one computed."""

WITHIN = 240.0
"""Upper bound for everything to arrive after the restart. Beyond a slow, loaded machine: a
RabbitMQ delay tier (a quorum queue dead-lettering at least once) that expires a message while
the broker boots finds no route yet and retries only after its
``dead_letter_worker_publisher_confirm_timeout`` (docs/flow-control.md). ``scripts/brokers``
sets 10 s; a broker left at RabbitMQ's 180 s default passes too. Late, never lost: the report
prints how late each message was."""


def _require(reason: str) -> None:
    if os.environ.get("EVENTBUS_REQUIRE_BROKERS", "").strip() not in ("", "0"):
        pytest.fail(reason + " (EVENTBUS_REQUIRE_BROKERS is set)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Restart:
    """When ``scripts/brokers restart`` said what (``time.time()``)."""

    launched: float = 0.0
    stopping: float | None = None
    starting: float | None = None
    ready: float | None = None
    down: float | None = None
    """First time the broker's port refused a connection."""
    up: float | None = None
    """First time after that it accepted one: nothing was delivered in between."""
    lines: list[str] = field(default_factory=list)


async def brokers(*args: str, within: float = 300.0, restart: Restart | None = None) -> None:
    """``scripts/brokers ARGS``; with ``restart``, note when it stops and starts the broker."""
    proc = await asyncio.create_subprocess_exec(
        str(BROKERS), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    lines: list[str] = restart.lines if restart is not None else []
    try:
        async with asyncio.timeout(within):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if restart is not None:
                    now = time.time()
                    if " stopping " in f" {line} " and restart.stopping is None:
                        restart.stopping = now
                    elif "brokers: starting" in line and restart.starting is None:
                        restart.starting = now
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"scripts/brokers {' '.join(args)} took over {within}s") from None
    if proc.returncode != 0:
        text = "\n".join(lines)
        raise AssertionError(f"scripts/brokers {' '.join(args)} failed:\n{text}")


async def require_scripted(broker: str) -> None:
    """Skip (fail under EVENTBUS_REQUIRE_BROKERS) unless ``BROKERS`` runs ``broker``."""
    if not os.access(BROKERS, os.X_OK):
        _require(f"no {BROKERS} to restart {broker} with")
    try:
        await brokers("status", broker, within=60)
    except AssertionError as exc:
        _require(
            f"{broker} is not run by {BROKERS}, cannot restart it (set EVENTBUS_BROKERS_SCRIPT "
            f"to the scripts/brokers that runs it): {exc}"
        )


async def _listening(host: str, port: int) -> bool:
    try:
        with anyio.fail_after(1.0):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


async def restart_broker(broker: str, url: str) -> Restart:
    """Restart ``broker``, noting when its port (``url``'s) stopped and started answering."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    restart = Restart(launched=time.time())

    async def watch() -> None:
        while restart.up is None:
            checked = time.time()
            listening = await _listening(parts.hostname or "", parts.port or 0)
            if restart.down is None and not listening:
                restart.down = checked
            elif restart.down is not None and listening:
                restart.up = checked
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        await brokers("restart", broker, restart=restart)
        restart.ready = time.time()
        with anyio.fail_after(10):
            while restart.up is None:  # noqa: ASYNC110 - a bounded poll
                await anyio.sleep(0.02)
    assert restart.stopping is not None and restart.starting is not None, restart.lines
    assert restart.down is not None, "the broker's port never stopped answering"
    return restart


@dataclass
class Seen:
    """What handlers saw: ``time.time()`` of every call, by message id."""

    handled: dict[str, list[float]] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    letters: dict[str, list[Message]] = field(default_factory=dict)
    letter_at: dict[str, float] = field(default_factory=dict)

    def handle(self, message: Message) -> None:
        self.handled.setdefault(message.id, []).append(time.time())
        if h.EXPIRES_AT in message.headers:
            self.expires[message.id] = float(message.headers[h.EXPIRES_AT])

    def letter(self, message: Message) -> None:
        self.letters.setdefault(message.id, []).append(message)
        self.letter_at.setdefault(message.id, time.time())

    def settled(self, ids: set[str]) -> bool:
        return ids <= set(self.handled) | set(self.letters)


async def wait_until(
    predicate: Callable[[], bool],
    within: float,
    what: str,
    missing: Callable[[], object] = lambda: None,
    broker: str | None = None,
) -> None:
    """Poll ``predicate``; on timeout say what is ``missing`` and, for RabbitMQ, where the
    scheduling queues stand (a message stuck in a tier or in the scheduled queue shows there)."""
    try:
        with anyio.fail_after(within):
            while not predicate():  # noqa: ASYNC110 - a bounded poll
                await anyio.sleep(0.05)
    except TimeoutError:
        state = await _scheduling_queues() if broker == "rabbitmq" else ""
        raise AssertionError(f"not within {within}s: {what}; missing {missing()}{state}") from None


async def _scheduling_queues() -> str:
    """``rabbitmqctl list_queues`` for eventbus's delay tiers and scheduled queue."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "messages",
            "consumers",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(30):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    except (OSError, TimeoutError) as e:
        return f"; rabbitmqctl list_queues failed: {e!r}"
    lines = [ln for ln in out.decode(errors="replace").splitlines() if "eventbus." in ln]
    return "; scheduling queues (name ready unacked total consumers):\n" + "\n".join(lines)


@dataclass
class Due:
    """A scheduled message: when it falls due at the earliest (its due time is computed inside
    `publish`, after ``earliest`` was taken), and its expiry when it has a ttl."""

    earliest: float
    ttl: float | None = None


async def scheduled_and_expiry_across_restart(
    url: str, broker: str, name: Callable[[str], str], *, later: float
) -> None:
    """``later``: the delay of one more message, meant to fall due after the broker is back (so
    longer than this broker's restart usually takes), to see a pending message that is not held
    back by the outage come on time."""
    await require_scripted(broker)
    topic, queue, stale = name("sched-rs"), name("sched-rs-q"), name("expiry-rs")
    # Kafka groups span topics: one per subscription, of this test only, so that starting one
    # consumer does not rebalance another.
    group, stale_group = name("g"), name("e")
    seen, expiry_seen = Seen(), Seen()

    worker = EventBus(url)

    @worker.subscribe(topic, group=group)
    async def on_topic(message: Message) -> None:
        seen.handle(message)

    @worker.consume(queue)
    async def on_queue(message: Message) -> None:
        seen.handle(message)

    @worker.consume(f"{topic}.{group}.dlq")
    async def on_topic_letter(message: Message) -> None:
        seen.letter(message)

    def expiry_consumer() -> EventBus:
        bus = EventBus(url)

        @bus.subscribe(stale, group=stale_group)
        async def on_stale(message: Message) -> None:
            expiry_seen.handle(message)

        @bus.consume(f"{stale}.{stale_group}.dlq")
        async def on_stale_letter(message: Message) -> None:
            expiry_seen.letter(message)

        return bus

    async with expiry_consumer():  # binds the group; it consumes nothing until the restart is over
        pass

    dues: dict[str, Due] = {}
    short: dict[str, float] = {}  # expiry of the messages that must expire during the restart
    long: dict[str, float] = {}
    async with worker:
        # Scheduled: due 3 to 8 s from now, while the broker restarts.
        local = timezone(timedelta(hours=-5), "UTC-5")
        for mid, delay, ttl in (
            ("delay-3", 3.0, None),
            ("delay-4.5", 4.5, None),
            ("delay-6", 6.0, None),
            ("delay-8", 8.0, None),
            ("later", later, None),
            ("ttl-from-due", 5.0, 300.0),  # valid from its due time, outlasting WITHIN
            ("tight-3", 3.0, 0.5),  # falls due during the restart and expires soon after
            ("tight-5", 5.0, 0.5),
        ):
            before = time.time()
            await worker.publish(topic, mid, key=mid, delay=delay, ttl=ttl, message_id=mid)
            dues[mid] = Due(before + delay, ttl)
        for mid, seconds in (("at-5", 5.0), ("at-7-local", 7.0)):
            at = datetime.now(local if "local" in mid else UTC) + timedelta(seconds=seconds)
            await worker.publish(topic, mid, key=mid, at=at, message_id=mid)
            dues[mid] = Due(at.timestamp())
        before = time.time()
        await worker.send(queue, "q", delay=4.0, message_id="queue-4")
        dues["queue-4"] = Due(before + 4.0)
        at = datetime.now(UTC) + timedelta(seconds=6.5)
        await worker.send(queue, "q", at=at, message_id="queue-at-6.5")
        dues["queue-at-6.5"] = Due(at.timestamp())

        # Last, what expires while the broker restarts and what stays valid, waiting unconsumed.
        for i in range(3):
            for ttl, kind in ((2.0, short), (120.0, long)):
                mid = f"{'short' if kind is short else 'long'}-{i}"
                before = time.time()
                await worker.publish(stale, mid, key=f"k{i}", ttl=ttl, message_id=mid)
                kind[mid] = before + ttl  # at least: the deadline is taken inside publish
        at = datetime.now(UTC) + timedelta(seconds=2)
        await worker.publish(stale, "x", expires_at=at, message_id="short-at")
        short["short-at"] = at.timestamp()

        restart = await restart_broker(broker, url)
        assert restart.stopping is not None and restart.starting is not None
        assert restart.stopping < min(d.earliest for d in dues.values()), (
            "the restart began after the first message fell due (scripts/brokers lock held?)"
        )

        async with expiry_consumer() as consumer:
            expiring = set(short) | set(long)
            await wait_until(
                lambda: expiry_seen.settled(expiring),
                WITHIN,
                "every message with a ttl handled or dead-lettered",
                lambda: sorted(expiring - set(expiry_seen.handled) - set(expiry_seen.letters)),
                broker,
            )
            await wait_until(
                lambda: seen.settled(set(dues)),
                WITHIN,
                "every scheduled message",
                lambda: sorted(set(dues) - set(seen.handled) - set(seen.letters)),
                broker,
            )
            await anyio.sleep(2.0)  # time for a duplicate to show
        stats = consumer.subscribers[0].stats

    # -- the report ---------------------------------------------------------------------------
    ready, down, up = restart.ready, restart.down, restart.up
    assert ready is not None and down is not None and up is not None
    print(
        f"\n{broker} restart: stopping at +{restart.stopping - restart.launched:.2f}s, "
        f"starting at +{restart.starting - restart.launched:.2f}s, "
        f"ready at +{ready - restart.launched:.2f}s; port closed "
        f"+{down - restart.launched:.2f}s to +{up - restart.launched:.2f}s"
    )
    for mid, due in sorted(dues.items(), key=lambda item: item[1].earliest):
        when = seen.handled[mid][0] if mid in seen.handled else seen.letter_at.get(mid, math.nan)
        what = "handled" if mid in seen.handled else "dead-lettered"
        print(
            f"  {mid:14} due +{due.earliest - restart.launched:5.2f}s: {what} "
            f"{when - due.earliest:+.3f}s after due, {when - max(due.earliest, up):+.3f}s after "
            "the later of due and the port open again"
        )

    # -- scheduled: each exactly once, never early ----------------------------------------------
    duplicates = {mid: len(times) for mid, times in seen.handled.items() if len(times) > 1}
    assert not duplicates, f"handled more than once: {duplicates}"
    letters = {mid: len(m) for mid, m in seen.letters.items() if len(m) > 1}
    assert not letters, f"dead-lettered more than once: {letters}"
    assert not set(seen.handled) & set(seen.letters), "handled and dead-lettered"
    early = {
        mid: round(due.earliest - seen.handled[mid][0], 3)
        for mid, due in dues.items()
        if mid in seen.handled and seen.handled[mid][0] < due.earliest
    }
    assert not early, f"handled before due (seconds early): {early}"
    never_expire = {mid for mid, due in dues.items() if not due.ttl or due.ttl > WITHIN}
    assert never_expire <= set(seen.handled), (
        f"not handled: {sorted(never_expire - set(seen.handled))}"
    )
    # A scheduled ttl counts from the due time: handled within it, or dead-lettered as expired
    # once it passed, never handled after it.
    for mid, due in dues.items():
        if due.ttl is None:
            continue
        if mid in seen.handled:
            assert seen.handled[mid][0] < seen.expires[mid], f"{mid} handled after its expiry"
            assert seen.expires[mid] >= due.earliest + due.ttl - RESOLUTION, (
                f"{mid}: ttl not from due"
            )
        else:
            [letter] = seen.letters[mid]
            assert letter.headers[h.DLQ_REASON] == "expired", letter.headers
            deadline = float(letter.headers[h.ORIGINAL_EXPIRES_AT])
            assert deadline >= due.earliest + due.ttl - RESOLUTION, f"{mid}: ttl not from due"
            failed = datetime.fromisoformat(letter.headers[h.FAILED_AT]).timestamp()
            assert failed >= deadline, f"{mid} dead-lettered {deadline - failed:.3f}s early"
    # "tight-*" expire half a second after they fall due: one that fell due while the broker's
    # port was closed and expired before it opened again cannot have been handled in time.
    downtime = [mid for mid, due in dues.items() if down <= due.earliest and due.earliest < up]
    assert len(downtime) >= 3, f"only {downtime} fell due while the broker was down"
    for mid in ("tight-3", "tight-5"):
        if mid in seen.handled:
            assert not down <= dues[mid].earliest < seen.expires[mid] < up, (
                f"{mid} fell due and expired while the broker was down, yet was handled"
            )

    # -- expiry: the expired dead-lettered, never handled; the valid handled in time -------------
    assert not set(short) & set(expiry_seen.handled), (
        f"expired yet handled: {sorted(set(short) & set(expiry_seen.handled))}"
    )
    assert set(expiry_seen.handled) == set(long), sorted(expiry_seen.handled)
    assert all(len(times) == 1 for times in expiry_seen.handled.values()), expiry_seen.handled
    for mid in long:
        assert expiry_seen.handled[mid][0] < expiry_seen.expires[mid], f"{mid} handled late"
    assert set(expiry_seen.letters) == set(short), sorted(expiry_seen.letters)
    for mid, deadline in short.items():
        [letter] = expiry_seen.letters[mid]
        assert letter.headers[h.DLQ_REASON] == "expired", letter.headers
        assert letter.headers[h.ERROR_TYPE] == "eventbus.dispatch.expiry.ExpiredError"
        assert h.EXPIRES_AT not in letter.headers
        original = float(letter.headers[h.ORIGINAL_EXPIRES_AT])
        assert original >= deadline - RESOLUTION, f"{mid}: the expiry moved to {original}"
        failed = datetime.fromisoformat(letter.headers[h.FAILED_AT]).timestamp()
        assert failed >= original, f"{mid} dead-lettered {original - failed:.3f}s early"
        assert down < original < up, f"{mid} did not expire while the broker was down"
    assert stats.expired == len(short) and stats.dead_letter_reasons == {"expired": len(short)}
    assert stats.handled == len(long)
    print(
        f"  expiry: {len(short)} expired during the restart dead-lettered, "
        f"{len(long)} valid handled, counted {Counter(stats.dead_letter_reasons)}"
    )
