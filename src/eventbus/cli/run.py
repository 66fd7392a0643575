"""``eventbus run``: one worker until SIGTERM/SIGINT, or a supervisor of several."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from typing import Any

import anyio

from eventbus.bus import EventBus
from eventbus.cli.common import (
    EXIT_CONFIG,
    EXIT_STARTUP,
    EXIT_USAGE,
    FATAL_AT_START,
    CliError,
    at_least,
    load_bus,
    log,
    seconds,
    worker_count,
)
from eventbus.metrics.config import WORKER_PORTS_DIR, MetricsConfig, require_prometheus_client
from eventbus.reload import require_watchfiles, watch, watched_paths
from eventbus.supervisor import MAX_RESTARTS, UP_DIR, WINDOW, Supervisor, mark_up
from eventbus.transports.registry import transport_for_url
from eventbus.transports.urls import censor_url

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
            fatal_at_start=FATAL_AT_START,
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


def add_parser(commands: Any) -> None:
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
        type=worker_count,
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
        type=seconds,
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
        type=at_least(0.1, float),
        default=5.0,
        metavar="S",
        help="seconds between two reads of consumer lag / queue depth (default 5)",
    )
    run.set_defaults(func=cmd_run)
