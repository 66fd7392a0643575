"""``eventbus dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

from eventbus.bus import EventBus
from eventbus.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    app_or_given_broker,
    load_bus,
    log_level_option,
    message_limit,
)
from eventbus.dlq import dlq_depths, dlq_purge, dlq_replay, dlq_show
from eventbus.errors import NotFoundError
from eventbus.message import Message
from eventbus.transports.urls import censor_url


def cmd_dlq(args: argparse.Namespace) -> int:
    command = f"dlq {args.dlq_command}"
    app: EventBus | None = None
    if args.dlq_command == "list" and args.app:
        app = load_bus(args.app)
        names = list(args.names) + [s.dead_letter for s in app.subscribers if s.dead_letter]
    else:
        names = list(getattr(args, "names", None) or [getattr(args, "name", "")])
    if not any(names):
        raise CliError(
            "name a dead-letter queue (or give --app MODULE:ATTR to list its DLQs)", EXIT_USAGE
        )

    if args.dlq_command == "purge" and not args.yes:  # asked before anything connects
        raise CliError("purge deletes dead letters for good: add --yes", EXIT_USAGE)

    url, transport = app_or_given_broker(app, getattr(args, "app", None), args.url, command)

    async def act() -> int:
        await transport.connect()
        try:
            if args.dlq_command == "list":
                for name, depth in (await dlq_depths(transport, names)).items():
                    print(f"{name}\t{'-' if depth is None else depth}")
            elif args.dlq_command == "show":
                for letter in await dlq_show(transport, args.name, limit=args.limit):
                    print(json.dumps(_describe(letter), ensure_ascii=False))
            elif args.dlq_command == "replay":
                with _ReplayProgress(args.name) as progress:
                    moved = await dlq_replay(
                        transport, args.name, limit=args.limit, progress=progress
                    )
                print(f"replayed {moved}")
            elif args.dlq_command == "purge":
                print(f"purged {await dlq_purge(transport, args.name, limit=args.limit)}")
        except NotFoundError as exc:
            raise CliError(
                f"no dead-letter queue {exc.name!r} on {censor_url(url)}", EXIT_NOT_FOUND
            ) from None
        finally:
            await transport.close()
        return 0

    return anyio.run(act)


class _ReplayProgress:
    """Progress of a replay on stderr: a bar on a terminal; otherwise (a log, a pipe) a line
    each tenth of the replay, at least `PROGRESS_EVERY` messages apart, and at least every
    `PROGRESS_SECONDS`. Nothing for the last message: the summary on stdout says it."""

    PROGRESS_EVERY = 100
    PROGRESS_SECONDS = 5.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._terminal = sys.stderr.isatty()
        self._bar: Any = None  # rich.progress.Progress, imported only on a terminal
        self._shown = 0
        self._shown_at = time.monotonic()

    def __enter__(self) -> _ReplayProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, done: int, total: int) -> None:
        if self._terminal:
            if self._bar is None:
                from rich.console import Console
                from rich.progress import Progress

                self._bar = Progress(console=Console(stderr=True), transient=True)
                self._bar.add_task(f"replaying {self._name}", total=total)
                self._bar.start()
            self._bar.update(self._bar.task_ids[0], completed=done)
            return
        now = time.monotonic()
        due = done - self._shown >= max(self.PROGRESS_EVERY, total // 10)
        if done >= total or not (due or now - self._shown_at >= self.PROGRESS_SECONDS):
            return
        self._shown, self._shown_at = done, now
        print(f"eventbus: replaying {self._name!r}: {done}/{total}", file=sys.stderr, flush=True)


def _describe(letter: Message) -> dict[str, object]:
    try:
        body: object = json.loads(letter.body)
    except ValueError:
        body = letter.body.decode(errors="replace")
    return {
        "id": letter.id,
        "key": letter.key,
        "type": letter.type,
        "headers": dict(letter.headers),
        "body": body,
    }


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="inspect and redrive dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    lst = dlq_commands.add_parser("list", help="how many dead letters wait in each DLQ")
    lst.add_argument("names", nargs="*")
    lst.add_argument("--app", metavar="MODULE:ATTR", help="list the DLQs of this app's handlers")
    for sub_name, text in (
        ("show", "print dead letters (left in place)"),
        ("replay", "send dead letters back to the group that failed them"),
        ("purge", "delete dead letters"),
    ):
        sub = dlq_commands.add_parser(sub_name, help=text)
        sub.add_argument("name")
        sub.add_argument(
            "--limit",
            type=message_limit,
            default=20 if sub_name == "show" else None,
            help=f"at most this many (default {'20' if sub_name == 'show' else 'all'})",
        )
        if sub_name == "purge":
            sub.add_argument("--yes", action="store_true")
    for sub in dlq_commands.choices.values():
        sub.add_argument("--url", help="transport URL (default: EVENTBUS_URL)")
        log_level_option(sub)
    dlq.set_defaults(func=cmd_dlq)
