"""The ``eventbus`` command: run workers, publish, inspect and redrive dead letters.

Exit codes: 0 done, 1 unexpected error, 2 bad command line, 3 cannot import the app,
4 bad configuration (URL, scheme, handler), 5 broker unreachable, 6 access refused
(authentication or authorization), 7 a startup hook failed, 8 no such dead-letter queue,
130 stopped by a second signal before the drain finished. ``run --workers N`` exits with a
worker's code when it gives up (128 + N for a worker killed by signal N).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio

from eventbus import __version__
from eventbus.bus import EventBus
from eventbus.dispatch.deadletter import default_dead_letter_name
from eventbus.dlq import dlq_depths, dlq_purge, dlq_replay, dlq_show
from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    NotFoundError,
    StartupHookError,
)
from eventbus.logs import JsonFormatter, quiet_client_libraries
from eventbus.message import Message
from eventbus.metrics.config import WORKER_PORTS_DIR, MetricsConfig, require_prometheus_client
from eventbus.reload import require_watchfiles, watch, watched_paths
from eventbus.supervisor import MAX_RESTARTS, UP_DIR, WINDOW, Supervisor, mark_up
from eventbus.transports.base import Transport
from eventbus.transports.memory import existing_memory_broker
from eventbus.transports.registry import transport_for_url
from eventbus.transports.urls import censor_url

__all__ = ["main"]

EXIT_ERROR, EXIT_USAGE, EXIT_IMPORT, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3, 4, 5
EXIT_DENIED = 6
"""Authentication or authorization refused (`AuthenticationError`, `AuthorizationError`)."""
EXIT_STARTUP = 7
"""A startup hook (``@bus.on_startup``) raised (`StartupHookError`)."""

_FATAL_AT_START = (EXIT_USAGE, EXIT_IMPORT, EXIT_CONFIG, EXIT_DENIED)
"""Exit codes of a worker that could not start, which a restart cannot fix: the supervisor
gives up at once on them (and on `EXIT_STARTUP`). Once a worker is up they are the app's."""
EXIT_NOT_FOUND = 8
"""``eventbus dlq show|replay|purge`` of a dead-letter queue that does not exist."""

log = logging.getLogger("eventbus.cli")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def load_bus(target: str) -> EventBus:
    """Import ``module:attribute`` (attribute defaults to ``bus``) from the working directory."""
    module_name, _, attr = target.partition(":")
    attr = attr or "bus"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise CliError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", EXIT_IMPORT
        ) from exc
    bus = getattr(module, attr, None)
    if not isinstance(bus, EventBus):
        found = type(bus).__name__ if bus is not None else "nothing"
        raise CliError(
            f"{target}: expected an EventBus at {module_name}.{attr}, found {found}", EXIT_IMPORT
        )
    return bus


# -- run ----------------------------------------------------------------------------------------


SAME_CTRL_C = 0.5
"""Seconds within which a second SIGINT is the same Ctrl-C: a terminal signals the whole
process group, and `uv run` forwards the signal it got too (DESIGN 8). SIGTERM never is."""
FORCE_AFTER = 3.0
"""Seconds a second signal waits for the release of unfinished work before exiting at once:
a synchronous handler in a thread cannot be interrupted, and would hold the process."""


async def _serve(bus: EventBus) -> int:
    """Run until SIGTERM/SIGINT; a second signal cuts the drain short, and ends the process
    at once if a handler still does not give up (nothing unsettled is acked: the broker
    redelivers it)."""
    signals_seen = 0
    first: tuple[int, float] | None = None
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            run_scope = anyio.CancelScope()

            async def run() -> None:
                with run_scope:
                    await bus.run()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            async for signum in signals:
                now = anyio.current_time()
                if (
                    first is not None
                    and signals_seen == 1
                    and signum == first[0] == signal.SIGINT
                    and now - first[1] < SAME_CTRL_C
                ):
                    continue  # the same Ctrl-C, delivered twice
                signals_seen += 1
                if signals_seen == 1:
                    first = (signum, now)
                    log.info(
                        "%s: stopping; in-flight handlers get %.1fs (signal again to stop now)",
                        signal.Signals(signum).name,
                        bus.graceful_timeout,
                    )
                    run_scope.cancel()
                elif signals_seen == 2:
                    log.warning("second signal: releasing unfinished messages and exiting")
                    bus.abort_drain()
                    tg.start_soon(_exit_if_still_held)
    return 130 if signals_seen > 1 else 0


async def _exit_if_still_held() -> None:
    await anyio.sleep(FORCE_AFTER)
    log.error(
        "a handler still runs %.0fs after the second signal (a synchronous one cannot be "
        "interrupted): exiting now; its message was not acked and is redelivered",
        FORCE_AFTER,
    )
    logging.shutdown()
    os._exit(130)


_WORKER_URL = "EVENTBUS_WORKER_URL"
"""How `run --workers N` hands ``--url`` to its children."""


def _worker_command(args: argparse.Namespace) -> list[str]:
    """How the supervisor starts one worker: this command, without what only the parent does."""
    command = [sys.executable, "-m", "eventbus", "run", args.target, "--workers", "1"]
    command += ["--log-level", args.log_level, "--log-format", args.log_format]
    if args.graceful_timeout is not None:
        command += ["--graceful-timeout", str(args.graceful_timeout)]
    if args.metrics_port is not None:
        command += ["--backlog-interval", str(args.backlog_interval)]
        if args.reload:  # one worker: it serves its endpoints itself
            command += ["--metrics-port", str(args.metrics_port)]
            command += ["--metrics-host", args.metrics_host]
    return command


def _supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` processes that share the work through the transport's groups (or one
    with ``--reload``), restarted when they die (`eventbus.supervisor`)."""
    env = dict(os.environ)
    if args.url:
        # Through the environment, never the command line: `ps` shows any user's arguments,
        # and the URL may hold a password (DESIGN 8).
        env[_WORKER_URL] = args.url
    merged_metrics = args.metrics_port is not None and not args.reload
    with tempfile.TemporaryDirectory(prefix="eventbus-metrics-") as ports:
        if merged_metrics:
            env[WORKER_PORTS_DIR] = ports
        supervisor = Supervisor(
            _worker_command(args),
            env,
            args.workers,
            fatal=(EXIT_STARTUP,),
            fatal_at_start=_FATAL_AT_START,
            restart_on_exit=not args.reload,
        )

        async def supervise() -> int:
            async with anyio.create_task_group() as tg:
                if merged_metrics:
                    from eventbus.metrics.workers import serve_workers  # prometheus_client

                    # Before any worker starts: a port that cannot be had stops everything.
                    await tg.start(
                        serve_workers, args.metrics_host, args.metrics_port, ports, supervisor
                    )
                if args.reload:
                    tg.start_soon(watch, watched_paths(args.target), supervisor.restart)
                code = await supervisor.run()
                tg.cancel_scope.cancel()
            return code

        return anyio.run(supervise)


def cmd_run(args: argparse.Namespace) -> int:
    args.url = args.url or os.environ.pop(_WORKER_URL, None)
    if args.reload:
        # The parent does not import the app: it keeps watching while the app is broken.
        if args.workers > 1:
            raise CliError("--reload runs one worker: leave out --workers", EXIT_USAGE)
        require_watchfiles()
        if args.metrics_port is not None:
            require_prometheus_client()
        return _supervise(args)
    if args.url:
        os.environ["EVENTBUS_URL"] = args.url
    bus = load_bus(args.target)
    if args.url and bus.url != args.url:
        bus.url, bus.transport = args.url, transport_for_url(args.url)
    if args.graceful_timeout is not None:
        bus.graceful_timeout = args.graceful_timeout
    up = os.environ.pop(UP_DIR, None)
    if up:  # a supervised worker: once its subscriptions are live, a failure is no startup's

        async def came_up() -> None:
            mark_up(up)

        bus.on_startup(came_up)
    ports = os.environ.pop(WORKER_PORTS_DIR, None)
    if args.metrics_port is not None or ports:
        require_prometheus_client()
        config = MetricsConfig(  # validated here, before any worker starts
            port=args.metrics_port, host=args.metrics_host, backlog_interval=args.backlog_interval
        )
        if ports:  # a worker of `--workers N`: its parent serves host:port for all
            from eventbus.metrics.workers import write_port

            config = MetricsConfig(port=0, host="127.0.0.1", backlog_interval=args.backlog_interval)
            bus.enable_metrics(config, on_listening=lambda port: write_port(ports, port))
        elif args.workers <= 1:
            bus.enable_metrics(config)
    if args.workers > 1:
        if bus.url.startswith("memory:"):
            raise CliError(
                "memory:// lives inside one process; --workers > 1 needs a broker URL "
                "(--url kafka://... or amqp://...)",
                EXIT_CONFIG,
            )
        args.graceful_timeout = bus.graceful_timeout
        return _supervise(args)
    log.info(
        "eventbus worker pid %d on %s with %d handler(s)",
        os.getpid(),
        censor_url(bus.url),
        len(bus.subscribers),
    )
    return anyio.run(_serve, bus)


# -- publish and dlq ----------------------------------------------------------------------------


def _given_url(url: str | None) -> str:
    url = url or os.environ.get("EVENTBUS_URL")
    if not url:
        raise CliError("give --url or set EVENTBUS_URL", EXIT_USAGE)
    return url


def _broker_url(given: str | None, command: str) -> str:
    """``--url``, else ``EVENTBUS_URL``; not a memory broker this process does not have.

    ``eventbus publish`` and ``dlq`` run in a process of their own: a ``memory://`` broker
    would be born empty in it and die with it, so a publish went nowhere and a DLQ looked
    empty, all with exit 0. Called in process (``main([...])`` from a test), the broker may
    exist already, and then it is the one meant."""
    url = _given_url(given)
    if urlsplit(url).scheme == "memory" and existing_memory_broker(url) is None:
        source = " (the URL in EVENTBUS_URL)" if not given else ""
        raise CliError(
            f"memory:// lives inside one process, so `eventbus {command}` cannot reach an "
            f"app's memory broker{source}; use a broker URL (kafka://... or amqp://...)",
            EXIT_CONFIG,
        )
    return url


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
    bus = EventBus(_broker_url(args.url, "publish"))

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

    if app is None or args.url:
        url = _broker_url(args.url, command)
        transport = transport_for_url(url)
    elif app.url.startswith("memory:"):  # importing the app made its broker, here: empty
        raise CliError(
            f"memory:// lives inside one process, so `eventbus {command}` cannot reach "
            f"the memory broker of {args.app}; give --url kafka://... or amqp://...",
            EXIT_CONFIG,
        )
    else:
        url, transport = app.url, app.transport

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


def cmd_status(args: argparse.Namespace) -> int:
    # Imported here: the table library costs every other command's start-up for nothing.
    from rich.console import Console
    from rich.live import Live

    from eventbus.status import Target, gather, render

    targets: list[Target] = []
    transport: Transport | None = transport_for_url(args.url) if args.url else None
    if args.app:
        bus = load_bus(args.app)
        transport = transport or bus.transport
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
    transport = transport or transport_for_url(_given_url(None))
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


# -- entry point ----------------------------------------------------------------------------------


def _at_least(minimum: float, kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` no lower than ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_workers = _at_least(1, int)
_seconds = _at_least(0, float)
_limit = _at_least(1, int)


_RUN_EXIT_CODES = """exit codes:
  0    stopped and drained
  1    unexpected error
  2    bad command line
  3    cannot import the app
  4    bad configuration (URL, scheme, handler, metrics port, missing extra)
  5    broker unreachable
  6    authentication or authorization refused
  7    a startup hook failed
  130  stopped by a second signal before the drain finished
with --workers N: a worker's own code when the supervisor gives up on it (128+N: killed by
signal N); 7 from a worker, or 2, 3, 4 and 6 before it came up, give up at once; other
crashes are restarted."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"eventbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run an app's handlers until SIGTERM/SIGINT",
        description="Run an app's handlers until SIGTERM/SIGINT.",
        epilog=_RUN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("target", help="MODULE:ATTR of an EventBus (ATTR defaults to 'bus')")
    run.add_argument("--url", help="transport URL (overrides the app's and EVENTBUS_URL)")
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes, restarted with backoff when they crash; gives up when one "
        f"crashes more than {MAX_RESTARTS} times in {WINDOW:.0f}s (default 1)",
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the worker when a .py file under the working directory "
        "changes; needs eventbus[reload] (default off)",
    )
    run.add_argument(
        "--graceful-timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds in-flight handlers get to finish on stop (default: the app's, 30)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        type=str.lower,  # INFO, Info and info alike
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    run.add_argument(
        "--log-format",
        default="text",
        type=str.lower,
        choices=["text", "json"],
        help="json: one object a line with message id, topic, group, attempt and trace id "
        "(default text)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus /metrics, /livez and /readyz on port P (with --workers N: the "
        "sum over all workers); needs eventbus[prometheus]",
    )
    run.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="H",
        help="address the metrics endpoints bind (default 0.0.0.0: scrapers and probes come "
        "from outside the pod)",
    )
    run.add_argument(
        "--backlog-interval",
        type=_at_least(0.1, float),
        default=5.0,
        metavar="S",
        help="seconds between two reads of consumer lag / queue depth (default 5)",
    )
    run.set_defaults(func=cmd_run)

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
    _log_level_option(pub)
    pub.set_defaults(func=cmd_publish)

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
    _log_level_option(status)
    status.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_at_least(0.1, float),
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    status.set_defaults(func=cmd_status)

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
            type=_limit,
            default=20 if sub_name == "show" else None,
            help=f"at most this many (default {'20' if sub_name == 'show' else 'all'})",
        )
        if sub_name == "purge":
            sub.add_argument("--yes", action="store_true")
    for sub in dlq_commands.choices.values():
        sub.add_argument("--url", help="transport URL (default: EVENTBUS_URL)")
        _log_level_option(sub)
    dlq.set_defaults(func=cmd_dlq)
    return parser


def _log_level_option(command: argparse.ArgumentParser) -> None:
    # One-shot commands print their result; their logs are for when something goes wrong.
    command.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="default warning",
    )


def _fail(message: str, code: int) -> NoReturn:
    print(f"eventbus: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        quiet_client_libraries(handler)
        if getattr(args, "log_format", "text") == "json":
            handler.setFormatter(JsonFormatter())
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        known = _known_error(exc)
        if known is None:
            raise
        _fail(str(known), _exit_code(known))
    return code


def _known_error(exc: BaseException) -> Exception | None:
    """The error to report; task groups wrap failures in exception groups, so look inside."""
    if isinstance(exc, CliError | BrokerUnavailableError | ConfigurationError | StartupHookError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _known_error(inner)
            if found is not None:
                return found
    return None


def _exit_code(exc: Exception) -> int:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return EXIT_DENIED
    if isinstance(exc, StartupHookError):
        return EXIT_STARTUP
    return EXIT_UNREACHABLE if isinstance(exc, BrokerUnavailableError) else EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
