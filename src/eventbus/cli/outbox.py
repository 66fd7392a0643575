"""``eventbus outbox relay``: a process that only relays outbox rows to the broker.

Either an app's bus (``MODULE:ATTR``, built with ``EventBus(outbox=...)``; its handlers do not
run) or a database named by ``--db`` / ``EVENTBUS_OUTBOX_DB`` (a ``postgresql://`` DSN or a
SQLite file) and a broker by ``--url`` / ``EVENTBUS_URL``. Prefer the environment variables for
anything holding a password: ``ps`` shows every user the command line. Several relays on one
table are safe (docs/outbox.md); SIGTERM/SIGINT finishes the batch in hand and exits 0; a
second signal exits 130 at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import Any

import anyio

from eventbus.bus import EventBus
from eventbus.cli.common import (
    EXIT_CONFIG,
    EXIT_USAGE,
    CliError,
    at_least,
    broker_url,
    load_bus,
    log,
    seconds,
)
from eventbus.cli.run import SAME_CTRL_C
from eventbus.outbox import PostgresOutbox, SqliteOutbox
from eventbus.outbox.base import DEFAULT_RETENTION, Outbox
from eventbus.postgres_common import redact
from eventbus.transports.registry import transport_for_url
from eventbus.transports.urls import censor_url

DB_VAR = "EVENTBUS_OUTBOX_DB"


def _outbox(db: str, args: argparse.Namespace) -> Outbox:
    if db.startswith(("postgresql://", "postgres://")):
        return PostgresOutbox(db, table=args.table, retention=args.retention)
    if "://" in db:
        raise CliError(
            f"--db must be a postgresql:// DSN or a SQLite file path, got {redact(db)!r}",
            EXIT_CONFIG,
        )
    return SqliteOutbox(db, table=args.table, retention=args.retention)


def _bus(args: argparse.Namespace) -> EventBus:
    db = args.db or os.environ.get(DB_VAR)
    if args.target:
        if db:
            raise CliError("give an app or --db, not both", EXIT_USAGE)
        if args.url:
            os.environ["EVENTBUS_URL"] = args.url  # as `eventbus run` does: the app may read it
        bus = load_bus(args.target)
        if bus.outbox_relay is None:
            raise CliError(f"{args.target}: the bus has no outbox= to relay", EXIT_CONFIG)
        if args.url and bus.url != args.url:
            bus.url, bus.transport = args.url, transport_for_url(args.url)
        if bus.url.startswith("memory:"):
            raise CliError(
                f"{args.target} publishes to memory://, which lives inside one process: a "
                "relay process would publish where no consumer is; give --url kafka://... or "
                "amqp://...",
                EXIT_CONFIG,
            )
        return bus
    if not db:
        raise CliError(f"give an app MODULE:ATTR, or --db (or {DB_VAR})", EXIT_USAGE)
    return EventBus(broker_url(args.url, "outbox relay"), outbox=_outbox(db, args))


async def _serve(bus: EventBus) -> int:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def relay() -> None:
                with scope:
                    async with bus.publisher():
                        log.info("relaying: connected to the broker")
                        await anyio.sleep_forever()
                tg.cancel_scope.cancel()

            tg.start_soon(relay)
            first = 0.0
            async for signum in signals:
                now = anyio.current_time()
                if scope.cancel_called and signum == signal.SIGINT and now - first < SAME_CTRL_C:
                    continue  # the same Ctrl-C, delivered twice (a terminal, `uv run`)
                if not scope.cancel_called:
                    first = now
                    log.info(
                        "%s: stopping the relay once its batch in hand is marked sent "
                        "(signal again to stop now)",
                        signal.Signals(signum).name,
                    )
                    scope.cancel()
                    continue
                # Rows published and not marked yet go out again from the next relay: a
                # duplicate, never a loss.
                log.warning("second signal: exiting now")
                logging.shutdown()
                os._exit(130)
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    bus = _bus(args)
    relay = bus.outbox_relay
    assert relay is not None
    relay.poll_interval = args.poll_interval
    relay.batch_size = args.batch_size
    if args.graceful_timeout is not None:
        bus.graceful_timeout = args.graceful_timeout
    log.info(
        "eventbus outbox relay pid %d: %s to %s",
        os.getpid(),
        ", ".join(f"{o.table} at {o.address()}" for o in relay.outboxes),
        censor_url(bus.url),
    )
    code = anyio.run(_serve, bus)
    log.info("relay stopped; relayed %d row(s)", sum(s.relayed for s in relay.stats.values()))
    return code


def add_parser(commands: Any) -> None:
    outbox = commands.add_parser("outbox", help="relay transactional outbox rows")
    sub = outbox.add_subparsers(dest="outbox_command", required=True)
    relay = sub.add_parser(
        "relay",
        help="publish committed outbox rows until SIGTERM/SIGINT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    relay.add_argument(
        "target", nargs="?", help="MODULE:ATTR of an EventBus built with outbox= (optional)"
    )
    relay.add_argument("--url", help="transport URL (overrides the app's; default: EVENTBUS_URL)")
    relay.add_argument(
        "--db", help=f"postgresql:// DSN or SQLite file of the outbox (default: {DB_VAR})"
    )
    relay.add_argument("--table", default="eventbus_outbox", help="default eventbus_outbox")
    relay.add_argument(
        "--retention",
        type=seconds,
        default=DEFAULT_RETENTION,
        metavar="S",
        help="seconds sent rows are kept, with --db (0: deleted once sent; default 7 days)",
    )
    relay.add_argument(
        "--poll-interval",
        type=at_least(0.01, float),
        default=0.2,
        metavar="S",
        help="seconds between looks at an empty outbox (default 0.2)",
    )
    relay.add_argument(
        "--batch-size", type=at_least(1, int), default=200, help="rows per publish (default 200)"
    )
    relay.add_argument(
        "--graceful-timeout",
        type=seconds,
        default=None,
        metavar="S",
        help="seconds the batch in hand gets to finish on stop (default: the bus's, 30)",
    )
    relay.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    relay.set_defaults(func=cmd_relay)
