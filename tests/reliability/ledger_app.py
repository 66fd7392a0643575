"""The worker app of the reliability scenarios, run in real processes by the CLI::

    REL_DSN=postgresql://... REL_RUN=r1 REL_TOPIC=t REL_GROUP=g \\
        python -m eventbus run tests.reliability.ledger_app:bus --url kafka://127.0.0.1:9092

Two groups subscribe to ``REL_TOPIC`` (every group gets every message):

- ``<REL_GROUP>-alo``, at-least-once, no dedup: records every invocation in
  ``rel_invocations`` when it starts and marks it ``done`` when the handler is about to return.
  Duplicate invocations here are what at-least-once delivery costs.
- ``<REL_GROUP>-eo``, a `PostgresDedupStore` shared by every worker, with the inbox: records
  every invocation the same way, and writes its effect (one row in ``rel_effects``) through the
  inbox connection, so it commits together with the "done" record: exactly once.

Poison messages (bodies that do not validate as `Item`) must be dead-lettered by both groups.

The bus is built lazily from the environment (module ``__getattr__``), so tests can import
`build_bus` without it. Tables are created by the test (``rel_ledger.SCHEMA``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
from pydantic import BaseModel, ConfigDict

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus.dedup.postgres import PostgresDedupStore

__all__ = ["AppConfig", "Item", "build_bus"]

log = logging.getLogger("reliability.app")

# Generous: the handlers themselves never fail, so only an infrastructure error (a lost
# database connection) would be retried; a good message must never end in the DLQ for that.
RETRY = RetryPolicy(max_attempts=8, initial_delay=0.05, max_delay=1.0)

# Batched: one statement writes every row queued meanwhile (see _GroupCommit).
INSERT_INVOCATIONS = (
    "INSERT INTO rel_invocations (run, grp, id, key, seq, pid, attempt, redelivered, inv)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],"
    " $6::int[], $7::int[], $8::bool[], $9::text[])"
)
MARK_DONE = (
    "UPDATE rel_invocations SET done = true, done_at = clock_timestamp()"
    " WHERE inv = ANY($1::text[])"
)
INSERT_EFFECT = "INSERT INTO rel_effects (run, id, key, seq, pid) VALUES ($1, $2, $3, $4, $5)"


class Item(BaseModel):
    """A good message. Poison messages lack ``pad`` (and carry ``poison``): undecodable."""

    model_config = ConfigDict(extra="forbid")

    run: str
    key: str
    seq: int
    pad: str


@dataclass(frozen=True, slots=True)
class AppConfig:
    dsn: str
    run: str
    topic: str
    group: str
    concurrency: int = 8
    handler_ms: float = 1.0
    """Each handler sleeps a uniform 0..handler_ms milliseconds (simulated work)."""
    lease: float = 5.0
    """Dedup claim lease: how long a key claimed by a SIGKILLed worker stays blocked."""
    ready_file: str | None = None
    stats_every: float = 5.0

    @classmethod
    def from_env(cls) -> AppConfig:
        env = os.environ
        missing = [v for v in ("REL_DSN", "REL_RUN", "REL_TOPIC", "REL_GROUP") if not env.get(v)]
        if missing:
            raise RuntimeError(f"ledger_app needs the environment variables {missing}")
        return cls(
            dsn=env["REL_DSN"],
            run=env["REL_RUN"],
            topic=env["REL_TOPIC"],
            group=env["REL_GROUP"],
            concurrency=int(env.get("REL_CONCURRENCY", "8")),
            handler_ms=float(env.get("REL_HANDLER_MS", "1.0")),
            lease=float(env.get("REL_LEASE", "5.0")),
            ready_file=env.get("REL_READY_FILE") or None,
            stats_every=float(env.get("REL_STATS_EVERY", "5.0")),
        )


class _GroupCommit:
    """Many handlers' rows, one statement: whoever finds no write in progress writes
    everything queued (again and again while more arrives); every caller returns only once
    its own row is written. So a record is never lost by a SIGKILL after its message was acked,
    yet the ledger costs a fraction of a round trip per message."""

    def __init__(self, write: Callable[[list[tuple[Any, ...]]], Awaitable[None]]) -> None:
        self._write = write
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writing = False

    async def add(self, row: tuple[Any, ...]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((row, done))
        if not self._writing:
            self._writing = True
            try:
                while self._queued:
                    batch, self._queued = self._queued, []
                    try:
                        await self._write([r for r, _ in batch])
                    except BaseException as exc:
                        failure = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                        for _, f in [*batch, *self._queued]:
                            if not f.done():
                                f.set_exception(failure)
                        self._queued = []
                        raise
                    for _, f in batch:
                        f.set_result(None)
            finally:
                self._writing = False
        await done


class _Recorder:
    """Writes invocation records on a pool of its own (never inside the inbox transaction:
    an invocation whose transaction is rolled back still happened)."""

    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._pool: Any = None
        self._lock = anyio.Lock()
        self._starts = _GroupCommit(self._write_starts)
        self._dones = _GroupCommit(self._write_dones)

    async def pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self._config.dsn, min_size=1, max_size=4)
        return self._pool

    async def _write_starts(self, rows: list[tuple[Any, ...]]) -> None:
        pool = await self.pool()
        columns = [list(column) for column in zip(*rows, strict=True)]
        await pool.execute(INSERT_INVOCATIONS, *columns)

    async def _write_dones(self, rows: list[tuple[Any, ...]]) -> None:
        pool = await self.pool()
        await pool.execute(MARK_DONE, [inv for (inv,) in rows])

    async def started(self, group: str, item: Item, delivery: Delivery) -> str:
        inv = uuid.uuid4().hex
        await self._starts.add(
            (
                self._config.run,
                group,
                delivery.message.id,
                item.key,
                item.seq,
                os.getpid(),
                delivery.attempt,
                delivery.redelivered,
                inv,
            )
        )
        return inv

    async def done(self, inv: str) -> None:
        await self._dones.add((inv,))


async def _work(config: AppConfig) -> None:
    if config.handler_ms > 0:
        await anyio.sleep(random.uniform(0.0, config.handler_ms) / 1000.0)


def build_bus(config: AppConfig, url: str | None = None) -> EventBus:
    """The two-group app described in the module docstring."""
    store = PostgresDedupStore(config.dsn, max_pool_size=config.concurrency + 4)
    bus = EventBus(url, dedup_store=store, graceful_timeout=10.0)
    recorder = _Recorder(config)
    alo, eo = f"{config.group}-alo", f"{config.group}-eo"

    @bus.subscribe(config.topic, group=alo, concurrency=config.concurrency, retry=RETRY)
    async def at_least_once(item: Item, delivery: Delivery) -> None:
        inv = await recorder.started("alo", item, delivery)
        await _work(config)
        await recorder.done(inv)

    # A short lease: a key claimed by a SIGKILLed worker is taken over after `lease` seconds.
    @bus.subscribe(
        config.topic,
        group=eo,
        concurrency=config.concurrency,
        retry=RETRY,
        dedup=True,
        dedup_lease=config.lease,
    )
    async def exactly_once(item: Item, delivery: Delivery, conn: asyncpg.Connection) -> None:
        inv = await recorder.started("eo", item, delivery)
        await _work(config)
        await conn.execute(
            INSERT_EFFECT, config.run, delivery.message.id, item.key, item.seq, os.getpid()
        )
        await recorder.done(inv)  # done = the handler returned; the effect commits after this

    @bus.on_startup
    async def ready() -> None:
        # Runs once every subscription is live: the harness waits for this file.
        if config.ready_file:
            await anyio.Path(config.ready_file).write_text(str(os.getpid()))
        log.info("reliability worker %d ready", os.getpid())
        while True:
            await anyio.sleep(config.stats_every)
            for sub in bus.subscribers:
                log.info("stats %s: %s", sub.group, sub.stats)

    return bus


_bus: EventBus | None = None


def __getattr__(name: str) -> Any:
    # `eventbus run tests.reliability.ledger_app:bus` asks for ``bus``: build it from the
    # environment on first access only, so importing this module needs no configuration.
    global _bus
    if name == "bus":
        if _bus is None:
            _bus = build_bus(AppConfig.from_env())
        return _bus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
