"""``eventbus status``: lag or depth, dead letters and consumers, once or ``--watch``."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import anyio

from eventbus.bus import EventBus
from eventbus.cli.common import (
    EXIT_USAGE,
    CliError,
    app_or_given_broker,
    at_least,
    load_bus,
    log_level_option,
)
from eventbus.dispatch.deadletter import default_dead_letter_name


def cmd_status(args: argparse.Namespace) -> int:
    # Imported here: the table library costs every other command's start-up for nothing.
    from rich.console import Console
    from rich.live import Live

    from eventbus.status import Target, gather, render

    targets: list[Target] = []
    bus: EventBus | None = None
    if args.app:
        bus = load_bus(args.app)
        targets += [
            Target(s.kind, s.name, s.group, s.handler.name, s.dead_letter)
            for s in bus.subscribers
            if not s.broadcast  # a broadcast queue is private to its subscriber
        ]
    for text in args.group:
        topic, sep, group = text.rpartition(":")
        if not sep or not topic or not group:
            raise CliError(f"--group expects TOPIC:GROUP, got {text!r}", EXIT_USAGE)
        targets.append(
            Target("topic", topic, group, None, default_dead_letter_name(topic, "topic", group))
        )
    targets += [
        Target("queue", q, None, None, default_dead_letter_name(q, "queue", None))
        for q in args.queue
    ]
    if not targets:
        raise CliError("give --app MODULE:ATTR, or --group TOPIC:GROUP / --queue NAME", EXIT_USAGE)
    _, transport = app_or_given_broker(bus, args.app, args.url, "status")
    console = Console()

    async def show() -> int:
        await transport.connect()
        try:
            if args.watch is None:
                console.print(render(await gather(transport, targets), title=_title()))
                return 0
            if not console.is_terminal:  # piped or logged: one table after the other
                while True:
                    console.print(render(await gather(transport, targets), title=_title()))
                    await anyio.sleep(args.watch)
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    live.update(render(await gather(transport, targets), title=_title()))
                    live.refresh()
                    await anyio.sleep(args.watch)
        finally:
            await transport.close()

    try:
        return anyio.run(show)
    except KeyboardInterrupt:
        return 0  # --watch ends with Ctrl-C


def _title() -> str:
    return f"eventbus status at {datetime.now().astimezone():%H:%M:%S}"


def add_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="lag or depth, dead letters and consumers of each group and queue"
    )
    status.add_argument("--app", metavar="MODULE:ATTR", help="report on this app's handlers")
    status.add_argument("--url", help="transport URL (default: the app's, or EVENTBUS_URL)")
    status.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="TOPIC:GROUP",
        help="a topic's group to report on; repeat for more (default none)",
    )
    status.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="a queue to report on; repeat for more (default none)",
    )
    log_level_option(status)
    status.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=at_least(0.1, float),
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    status.set_defaults(func=cmd_status)
