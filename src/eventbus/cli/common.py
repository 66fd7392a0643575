"""What every subcommand shares: exit codes, `CliError`, loading the app, the URL, options."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from eventbus.bus import EventBus
from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger
from eventbus.transports.base import Transport
from eventbus.transports.memory import existing_memory_broker
from eventbus.transports.registry import transport_for_url

EXIT_ERROR, EXIT_USAGE, EXIT_IMPORT, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3, 4, 5
EXIT_DENIED = 6
"""Authentication or authorization refused (`AuthenticationError`, `AuthorizationError`)."""
EXIT_STARTUP = 7
"""A startup hook (``@bus.on_startup``) raised (`StartupHookError`)."""

FATAL_AT_START = (EXIT_USAGE, EXIT_IMPORT, EXIT_CONFIG, EXIT_DENIED)
"""Exit codes of a worker that could not start, which a restart cannot fix: the supervisor
gives up at once on them (and on `EXIT_STARTUP`). Once a worker is up they are the app's."""
EXIT_NOT_FOUND = 8
"""``eventbus dlq show|replay|purge`` of a dead-letter queue that does not exist."""

log = get_logger("eventbus.cli")


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


def given_url(url: str | None) -> str:
    url = url or os.environ.get("EVENTBUS_URL")
    if not url:
        raise CliError("give --url or set EVENTBUS_URL", EXIT_USAGE)
    return url


def broker_url(given: str | None, command: str) -> str:
    """``--url``, else ``EVENTBUS_URL``; not a memory broker this process does not have.

    ``eventbus publish`` and ``dlq`` run in a process of their own: a ``memory://`` broker
    would be born empty in it and die with it, so a publish went nowhere and a DLQ looked
    empty, all with exit 0. Called in process (``main([...])`` from a test), the broker may
    exist already, and then it is the one meant."""
    url = given_url(given)
    if urlsplit(url).scheme == "memory" and existing_memory_broker(url) is None:
        source = " (the URL in EVENTBUS_URL)" if not given else ""
        raise CliError(
            f"memory:// lives inside one process, so `eventbus {command}` cannot reach an "
            f"app's memory broker{source}; use a broker URL (kafka://... or amqp://...)",
            EXIT_CONFIG,
        )
    return url


def app_or_given_broker(
    app: EventBus | None, app_name: str | None, given: str | None, command: str
) -> tuple[str, Transport]:
    """The broker a command that may read an app (``--app``) works on: ``--url`` (else
    ``EVENTBUS_URL``) when given or without an app, else the app's own -- unless that is
    ``memory://``: importing the app made its broker here, empty."""
    if app is None or given:
        url = broker_url(given, command)
        return url, transport_for_url(url)
    if app.url.startswith("memory:"):
        raise CliError(
            f"memory:// lives inside one process, so `eventbus {command}` cannot reach "
            f"the memory broker of {app_name}; give --url kafka://... or amqp://...",
            EXIT_CONFIG,
        )
    return app.url, app.transport


def at_least(minimum: float, kind: type[int] | type[float]) -> Callable[[str], float]:
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


worker_count = at_least(1, int)
seconds = at_least(0, float)
message_limit = at_least(1, int)


def log_level_option(command: argparse.ArgumentParser) -> None:
    # One-shot commands print their result; their logs are for when something goes wrong.
    command.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="default warning",
    )
