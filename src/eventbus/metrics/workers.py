"""The parent of ``eventbus run --workers N --metrics-port P``: one endpoint for all workers.

Each worker serves its own endpoints on ``127.0.0.1``, on a port the system picks, and writes
that port to ``<pid>.port`` in a directory the parent names in `WORKER_PORTS_DIR` (the environment,
like the URL: never the command line). The parent serves ``host:P`` on its own event loop;
each request asks every worker:

- ``/metrics``: the workers' expositions merged (`merge`); a worker that does not answer is
  left out of that scrape.
- ``/readyz``: 200 only when every worker runs, reported its port and says it is ready (a
  worker the supervisor is restarting is not).
- ``/livez``: 200 when every running worker that reported its port answers (one still
  starting is not dead yet; a dead one is the supervisor's to restart).

The live workers come from the `Supervisor`: a restarted worker has a new pid.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST

from eventbus.loggers import get_logger
from eventbus.metrics import http
from eventbus.metrics.merge import merge, render
from eventbus.supervisor import Supervisor

__all__ = ["serve_workers", "write_port"]

log = get_logger("eventbus.metrics")

_TEXT = "text/plain; charset=utf-8"


def write_port(directory: str, port: int) -> None:
    """A worker's half: say where it serves (atomically: the parent never reads half a file)."""
    path = Path(directory) / f"{os.getpid()}.port"
    partial = path.with_suffix(".tmp")
    partial.write_text(str(port))
    os.replace(partial, path)


class _Workers:
    def __init__(self, directory: str, supervisor: Supervisor) -> None:
        self._directory = Path(directory)
        self._supervisor = supervisor

    def ports(self) -> dict[int, int]:
        """Worker pid -> port, for every live worker that reported one (a restarted worker's
        old pid left its file behind: it no longer counts)."""
        live = set(self._supervisor.pids().values())
        found: dict[int, int] = {}
        for path in self._directory.glob("*.port"):
            try:
                pid = int(path.stem)
                if pid in live:
                    found[pid] = int(path.read_text())
            except (OSError, ValueError):
                continue
        return found

    async def ask(self, path: str) -> tuple[dict[int, int], dict[int, tuple[int, bytes]]]:
        """Every reported worker's answer to ``GET path``; those that fail are missing."""
        ports = self.ports()
        answers: dict[int, tuple[int, bytes]] = {}

        async def one(pid: int, port: int) -> None:
            try:
                answers[pid] = await http.get("127.0.0.1", port, path)
            except (OSError, TimeoutError) as exc:
                log.debug("worker %d did not answer %s: %r", pid, path, exc)

        async with anyio.create_task_group() as tg:
            for pid, port in ports.items():
                tg.start_soon(one, pid, port)
        return ports, answers

    async def respond(self, path: str) -> http.Response:
        if path == "/metrics":
            _, answers = await self.ask("/metrics")
            texts = [body.decode() for status, body in answers.values() if status == 200]
            return 200, CONTENT_TYPE_LATEST, render(merge(texts))
        if path == "/readyz":
            # A worker being restarted is missing from ``ports``: not ready until it is back.
            ports, answers = await self.ask("/readyz")
            ready = len(ports) == self._supervisor.workers and all(
                answers.get(pid, (0, b""))[0] == 200 for pid in ports
            )
            return (200, _TEXT, b"ready\n") if ready else (503, _TEXT, b"not ready\n")
        if path == "/livez":
            # The supervisor restarts a dead worker itself; only one that hangs is for the
            # orchestrator to act on.
            ports, answers = await self.ask("/livez")
            alive = all(answers.get(pid, (0, b""))[0] == 200 for pid in ports)
            return (200, _TEXT, b"ok\n") if alive else (503, _TEXT, b"a worker is down\n")
        return 404, _TEXT, b"/metrics, /livez or /readyz\n"


async def serve_workers(
    host: str,
    port: int,
    directory: str,
    supervisor: Supervisor,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the merged endpoints of ``supervisor``'s workers until cancelled;
    ``task_status.started(port)`` once listening."""
    workers = _Workers(directory, supervisor)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(http.serve, host, port, workers.respond)
        log.info("metrics of %d workers on http://%s:%d/metrics", supervisor.workers, host, bound)
        task_status.started(bound)
