"""``eventbus run --reload``: restart the worker when a Python file changes (development only).

The watching is `watchfiles` (extra ``eventbus[reload]``): native file events, debounced, so
an editor's save of several files is one restart. What restarts is the `Supervisor`'s: the old
worker gets SIGTERM and drains like any stopped worker, then a new one starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger

__all__ = ["require_watchfiles", "watch", "watched_paths"]

log = get_logger("eventbus.reload")


def require_watchfiles() -> None:
    """Raise `ConfigurationError` naming the extra when ``watchfiles`` is missing."""
    try:
        import watchfiles  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "--reload needs watchfiles: pip install 'eventbus[reload]'"
        ) from exc


def watched_paths(target: str) -> list[Path]:
    """The working directory, and the app's top-level package when it lives elsewhere (an
    installed package in development mode). Found without importing the app: the parent must
    keep watching when the app is broken, so that fixing it restarts the worker."""
    cwd = Path.cwd().resolve()
    paths = [cwd]
    top = target.partition(":")[0].split(".")[0]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # where the worker imports it from (`load_bus`)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        root = Path(spec.origin).resolve().parent
        if not root.is_relative_to(cwd):
            paths.append(root)
    return paths


async def watch(paths: list[Path], on_change: Callable[[], None]) -> None:
    """Call ``on_change`` after each batch of changes to ``.py`` files under ``paths``."""
    from watchfiles import PythonFilter, awatch

    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # our line says what changed
    log.info("watching %s for changes", ", ".join(str(p) for p in paths))
    async for changes in awatch(*paths, watch_filter=PythonFilter()):
        changed = sorted({Path(path).name for _, path in changes})
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        log.info("%s%s changed: restarting the worker", ", ".join(changed[:3]), more)
        on_change()
