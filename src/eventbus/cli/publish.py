"""``eventbus publish``: one JSON message to a topic or queue."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from eventbus.bus import EventBus
from eventbus.cli.common import EXIT_USAGE, CliError, broker_url, log_level_option


def cmd_publish(args: argparse.Namespace) -> int:
    if args.old_topic is not None:  # 0.1's `eventbus publish URL TOPIC`
        if args.url:
            raise CliError("give the URL once: eventbus publish TOPIC --url URL", EXIT_USAGE)
        args.url, args.topic = args.topic, args.old_topic
        print(
            "eventbus: warning: `eventbus publish URL TOPIC` is deprecated; "
            "use `eventbus publish TOPIC --url URL` (or EVENTBUS_URL)",
            file=sys.stderr,
        )
    try:
        payload = json.loads(args.json)
    except json.JSONDecodeError as exc:
        raise CliError(f"--json is not valid JSON: {exc}", EXIT_USAGE) from exc
    headers = dict(_header(h) for h in args.header)
    bus = EventBus(broker_url(args.url, "publish"))

    async def publish() -> str:
        async with bus:
            if args.queue:
                return await bus.send(args.topic, payload, key=args.key, headers=headers)
            return await bus.publish(args.topic, payload, key=args.key, headers=headers)

    print(anyio.run(publish))
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise CliError(f"--header expects name=value, got {text!r}", EXIT_USAGE)
    return name, value


def add_parser(commands: Any) -> None:
    pub = commands.add_parser("publish", help="publish one JSON message")
    pub.add_argument("topic", metavar="TOPIC", help="topic (or queue, with --queue)")
    pub.add_argument("old_topic", nargs="?", help=argparse.SUPPRESS)  # 0.1: publish URL TOPIC
    pub.add_argument("--url", help="transport URL (default: EVENTBUS_URL)")
    pub.add_argument("--json", required=True, help="the payload, as JSON")
    pub.add_argument("--key", help="partition key (default none)")
    pub.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header; repeat for more (default none)",
    )
    pub.add_argument("--queue", action="store_true", help="send to a queue instead of a topic")
    log_level_option(pub)
    pub.set_defaults(func=cmd_publish)
