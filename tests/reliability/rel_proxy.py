"""A TCP proxy between clients and a broker that can cut every connection on demand.

    proxy = TcpProxy("127.0.0.1", 5672)          # listen_port=0: any free port
    await proxy.start()                           # clients connect to proxy.port
    proxy.cut(refuse_for=2.0)                     # reset every connection; refuse new ones 2 s
    await proxy.close()

Connections are aborted (RST), not closed politely: to the client it looks like a network
failure or a broker crash, never like an orderly broker shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["TcpProxy"]

log = logging.getLogger("reliability.proxy")

_CHUNK = 256 * 1024


class _Pair:
    __slots__ = ("client", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards ``listen_host:listen_port`` to ``upstream_host:upstream_port``. Runs on the
    event loop that calls `start`; every method must be called from that loop."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen = (listen_host, listen_port)
        self.port = listen_port
        self.accepted = 0
        self.refused = 0
        self.cut_connections = 0
        self._pairs: set[_Pair] = set()
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self.listen, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def cut(self, refuse_for: float = 0.0) -> int:
        """Reset every open connection; refuse (reset) new ones for ``refuse_for`` seconds.
        Returns how many connections were cut."""
        loop = asyncio.get_running_loop()
        self._refuse_until = max(self._refuse_until, loop.time() + refuse_for)
        pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            pair.abort()
        self.cut_connections += len(pairs)
        log.info("proxy :%d cut %d connections", self.port, len(pairs))
        return len(pairs)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._refuse_until:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.refused += 1
            writer.transport.abort()
            return
        if loop.time() < self._refuse_until:  # a cut happened while we connected
            self.refused += 1
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.accepted += 1
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            # Either direction ending ends both: neither AMQP nor Kafka half-closes.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(reader, up_writer, pair))
                tg.create_task(self._pipe(up_reader, writer, pair))
        finally:
            self._pairs.discard(pair)
            pair.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            pair.abort()
