"""`Supervisor`: the parent of ``eventbus run --workers N`` and of ``eventbus run --reload``.

It starts N worker processes (numbered 1..N, each in a session of its own so a terminal's
Ctrl-C reaches the parent only) and keeps them running:

- A worker that dies while the parent is not stopping (a non-zero exit, or killed by a signal:
  a handler that segfaults, the OOM killer) is started again after a capped exponential
  backoff (`Backoff`, jittered: up to 0.5 s, doubling up to 5 s, reset once a worker has
  stayed up for `WINDOW`). Its messages are not lost: they were never settled, so the broker
  hands them out again.
- A worker that dies more than `MAX_RESTARTS` times within `WINDOW` seconds is crash-looping:
  restarting it again only hammers the broker. The supervisor gives up: it stops the others
  (SIGTERM, so they drain) and exits with the dying worker's code.
- A worker that exits with one of the ``fatal`` codes (a startup hook failed), or with one of
  the ``fatal_at_start`` codes before it came up (the app cannot be imported, the
  configuration is wrong, access is refused), would fail the same way on every restart: the
  supervisor gives up at once with that code. A worker is up once its subscriptions are live:
  it says so with `mark_up` (a ``<pid>.up`` file in the directory `UP_DIR` names). After that
  those codes are the app's own, and a crash like any other.
- A worker that exits 0 while the parent is not stopping was stopped on purpose (someone
  signalled that one process): it is not started again, and the others keep running.
- SIGTERM/SIGINT to the parent are forwarded to every worker, each signal once (a second one
  cuts the workers' drain short, as it does for a single worker), and the parent waits for
  them to drain. Nothing is restarted from then on.

With ``restart_on_exit=False`` (``--reload``) a worker that exits on its own is not restarted
at once, whatever its code: it waits for `restart()`, the next file change, since restarting
an app with a syntax error again only prints the same error again.

`pids()` is the set of live workers, for the merged metrics endpoints: a restarted worker has
a new pid, and the old one must drop out of ``/readyz``.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process

from eventbus.backoff import Backoff
from eventbus.loggers import get_logger

__all__ = ["MAX_RESTARTS", "UP_DIR", "WINDOW", "Supervisor", "exit_code", "mark_up"]

log = get_logger("eventbus.supervisor")

MAX_RESTARTS = 5
"""Restarts of one worker allowed within `WINDOW`; the next death gives up."""
WINDOW = 60.0
"""Seconds over which restarts are counted, and after which a worker's backoff resets."""
UP_DIR = "EVENTBUS_WORKER_UP_DIR"
"""Set for the workers: the directory where `mark_up` says a worker came up."""


def mark_up(directory: str) -> None:
    """A worker's half: its subscriptions are live, so its startup did not fail."""
    (Path(directory) / f"{os.getpid()}.up").touch()


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


@dataclass
class _Slot:
    """Worker number ``number``: its current process, if any, and its restart history."""

    number: int
    backoff: Backoff
    process: Process | None = None
    replace: bool = False  # restart() stopped it: its exit is no crash
    wake: anyio.Event = field(default_factory=anyio.Event)
    restarts: deque[float] = field(default_factory=deque)
    code: int = 0


class Supervisor:
    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        workers: int,
        *,
        fatal: Collection[int] = (),
        fatal_at_start: Collection[int] = (),
        restart_on_exit: bool = True,
    ) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._fatal = frozenset(fatal)
        self._fatal_at_start = frozenset(fatal_at_start)
        self._up = Path()
        self._restart_on_exit = restart_on_exit
        self._slots = [
            _Slot(n, Backoff(0.5, 5.0, stable_after=WINDOW)) for n in range(1, workers + 1)
        ]
        self._forwarded: int | None = None  # the first signal forwarded: stopping
        self._gave_up: int | None = None

    @property
    def workers(self) -> int:
        return len(self._slots)

    @property
    def stopping(self) -> bool:
        return self._forwarded is not None

    def pids(self) -> dict[int, int]:
        """Worker number -> pid, for every worker process currently running."""
        return {s.number: s.process.pid for s in self._slots if s.process is not None}

    async def run(self) -> int:
        """Run the workers until they all ended; the exit code for the parent."""
        with (
            tempfile.TemporaryDirectory(prefix="eventbus-up-") as up,
            anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        ):
            self._up = Path(up)
            self._env[UP_DIR] = up
            async with anyio.create_task_group() as tg:

                async def forward() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        log.info("%s: forwarding it to %d worker(s)", name, len(self.pids()))
                        self.stop(signum)

                tg.start_soon(forward)
                async with anyio.create_task_group() as slots:
                    for slot in self._slots:
                        slots.start_soon(self._keep, slot)
                tg.cancel_scope.cancel()
        if self._gave_up is not None:
            return self._gave_up
        return max((s.code for s in self._slots), default=0)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every running worker; from now on nothing is restarted."""
        if self._forwarded is None:
            self._forwarded = signum
        for slot in self._slots:
            slot.wake.set()
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.Signals(signum))

    def restart(self) -> None:
        """Stop every worker gracefully (SIGTERM, then its drain) and start a new one."""
        if self.stopping:
            return
        for slot in self._slots:
            if slot.process is None:
                slot.wake.set()  # waiting for a change: this is it
            elif not slot.replace:  # a second SIGTERM would cut its drain short
                slot.replace = True
                slot.process.send_signal(signal.SIGTERM)

    async def _keep(self, slot: _Slot) -> None:
        while not self.stopping:
            process = await anyio.open_process(
                self._command,
                stdin=None,  # inherited, like stdout and stderr: nobody reads a pipe here
                stdout=None,
                stderr=None,
                env=self._env,
                start_new_session=True,
            )
            async with process:
                slot.process = process
                log.info("worker %d started (pid %d)", slot.number, process.pid)
                slot.backoff.up()
                if self._forwarded is not None:  # a stop came while it was being started
                    process.send_signal(signal.Signals(self._forwarded))
                returncode = await process.wait()
            slot.process = None
            up = (self._up / f"{process.pid}.up").exists()
            if not await self._again(slot, returncode, up=up):
                return

    async def _again(self, slot: _Slot, returncode: int, *, up: bool) -> bool:
        """Decide what follows a worker's exit; wait as long as that takes. False: done."""
        n, what = slot.number, _describe(returncode)
        slot.code = exit_code(returncode)  # a stop during the backoff still reports the crash
        if self._forwarded is not None:
            if returncode == -self._forwarded:
                # Killed by the signal we forwarded before it installed its handlers: a clean
                # stop of a worker that had nothing to drain.
                slot.code = 0
            log.info("worker %d exited with %s", n, what)
            return False
        if slot.replace:
            slot.replace = False
            log.info("worker %d exited with %s; starting it again", n, what)
            return True
        slot.wake = anyio.Event()
        if not self._restart_on_exit:
            log.warning("worker %d exited with %s; waiting for a file change", n, what)
            await slot.wake.wait()
            return not self.stopping
        if returncode == 0:
            log.info("worker %d exited with code 0 on its own; not restarted", n)
            return False
        if returncode in self._fatal or (returncode in self._fatal_at_start and not up):
            log.error("worker %d exited with %s, which a restart cannot fix; giving up", n, what)
            self._give_up(exit_code(returncode))
            return False
        now = time.monotonic()
        while slot.restarts and slot.restarts[0] < now - WINDOW:
            slot.restarts.popleft()
        if len(slot.restarts) >= MAX_RESTARTS:
            log.error(
                "worker %d exited with %s after %d restarts within %.0fs; giving up",
                n,
                what,
                len(slot.restarts),
                WINDOW,
            )
            self._give_up(exit_code(returncode))
            return False
        delay = slot.backoff.next()
        log.warning("worker %d exited with %s; restarting in %.1fs", n, what, delay)
        slot.restarts.append(now)
        with anyio.move_on_after(delay):
            await slot.wake.wait()  # a stop ends the wait early
        return not self.stopping

    def _give_up(self, code: int) -> None:
        if self._gave_up is None:
            self._gave_up = code
            self.stop(signal.SIGTERM)
