"""What runs beside the handlers when metrics are on: the HTTP endpoints and the backlog reads.

Both live in the bus's task group (STYLE 8) and end when the bus has stopped, so ``/metrics``
can still be scraped, and ``/readyz`` says 503, while in-flight handlers drain.

- ``/metrics``: the bus's own registry (never the global one) in the Prometheus text format.
- ``/livez``: 200 whenever the event loop answers.
- ``/readyz``: 200 while the bus is connected and every subscription can receive; 503 while it
  starts, reconnects or drains.

Consumer lag and queue depth come from `Transport.backlog`, read every ``backlog_interval``
seconds by a background task: a scrape never waits for the broker. `Capabilities.backlog`
says which of the two a transport reports.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from eventbus.loggers import get_logger
from eventbus.metrics import http
from eventbus.metrics.collector import BusCollector
from eventbus.metrics.recorder import BusMetrics
from eventbus.transports.base import Transport

__all__ = ["MetricsService"]

log = get_logger("eventbus.metrics")

_TEXT = "text/plain; charset=utf-8"


class MetricsService:
    def __init__(
        self,
        metrics: BusMetrics,
        transport: Callable[[], Transport],
        ready: Callable[[], bool],
        on_listening: Callable[[int], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BusCollector(metrics))
        self._transport = transport
        self._ready = ready
        self._on_listening = on_listening
        self._scope: anyio.CancelScope | None = None
        self.port: int | None = None
        """The port ``/metrics`` is served on, once listening."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve and refresh until `stop`; started once the port is bound."""
        self._scope = anyio.CancelScope()
        with self._scope:
            async with anyio.create_task_group() as tg:
                config = self.metrics.config
                if config.port is not None:
                    self.port = await tg.start(http.serve, config.host, config.port, self.respond)
                    log.info("metrics on http://%s:%d/metrics", config.host, self.port)
                    if self._on_listening is not None:
                        self._on_listening(self.port)
                tg.start_soon(self._refresh_backlog)
                task_status.started()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def respond(self, path: str) -> http.Response:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.render()
        if path == "/livez":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            if self._ready():
                return 200, _TEXT, b"ready\n"
            return 503, _TEXT, b"not ready\n"
        return 404, _TEXT, b"/metrics, /livez or /readyz\n"

    async def _refresh_backlog(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh_backlog()
                failing = False
            except Exception as exc:
                # The last values stay: a broker that cannot be asked now still had them.
                if not failing:
                    log.warning("cannot read the backlog from the broker (%r); trying on", exc)
                failing = True
            await anyio.sleep(self.metrics.config.backlog_interval)

    async def refresh_backlog(self) -> None:
        """Read every subscription's backlog from the broker once."""
        transport = self._transport()
        kind = transport.capabilities.backlog
        for sub in list(self.metrics.subscriptions):
            subscriber = sub.subscriber
            if subscriber.broadcast:
                continue  # a broadcast has no group: nothing waits for it on the broker
            with anyio.fail_after(max(10.0, self.metrics.config.backlog_interval)):
                backlog = await transport.backlog(subscriber.spec)
            self.metrics.set_backlog(sub, kind, backlog)
