"""The ``eventbus`` command: run workers, publish, inspect and redrive dead letters, relay an
outbox, check schemas, describe an app in AsyncAPI.

Exit codes: 0 done, 1 unexpected error, 2 bad command line, 3 cannot import the app,
4 bad configuration (URL, scheme, handler), 5 broker unreachable, 6 access refused
(authentication or authorization), 7 a startup hook failed, 8 no such dead-letter queue,
9 a schema breaks its compatibility level (``schema check``), 130 stopped by a second signal
before the drain finished. ``run --workers N`` exits with a worker's code when it gives up
(128 + N for a worker killed by signal N).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from eventbus import __version__
from eventbus.cli import asyncapi, dlq, outbox, publish, run, schema, status
from eventbus.cli.common import (
    EXIT_CONFIG,
    EXIT_DENIED,
    EXIT_STARTUP,
    EXIT_UNREACHABLE,
    CliError,
)
from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    StartupHookError,
)
from eventbus.logs import JsonFormatter, quiet_client_libraries

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"eventbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (run, publish, status, dlq, outbox, schema, asyncapi):
        command.add_parser(commands)
    return parser


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
