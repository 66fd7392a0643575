"""A TCP proxy that aborts every connection ``cut_after`` seconds after accepting it, and
records when it accepted each (event loop time): a broker that takes connections, then drops
them right after the handshake. `freeze` stops passing bytes, connections left open: a broker
that stopped answering; `freeze_requests` stops only what the client sends, so the broker's
heartbeats and notifications still arrive; `thaw` lets everything through again.

    proxy = CuttingProxy("127.0.0.1", 5672, cut_after=0.5)
    await proxy.start()        # clients connect to 127.0.0.1:proxy.port
    ...
    await proxy.close()
"""

from __future__ import annotations

import asyncio

__all__ = ["CuttingProxy"]


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, cut_after: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_after = cut_after
        self.port = 0
        self.accepted: list[float] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._to_broker = asyncio.Event()
        self._to_client = asyncio.Event()
        self.thaw()

    def freeze(self) -> None:
        self._to_broker.clear()
        self._to_client.clear()

    def freeze_requests(self) -> None:
        self._to_broker.clear()

    def thaw(self) -> None:
        self._to_broker.set()
        self._to_client.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.thaw()  # a frozen pipe waits for it: let it run into the aborted writer
        for writer in list(self._writers):
            writer.transport.abort()  # ends the pipes, and so every _serve
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.accepted.append(loop.time())
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            async with asyncio.timeout(self.cut_after):
                await asyncio.gather(
                    _pipe(reader, up_writer, self._to_broker),
                    _pipe(up_reader, writer, self._to_client),
                )
        except (TimeoutError, OSError):
            pass
        finally:
            self._serving.discard(task)
            for end in (writer, up_writer):
                if end is not None:
                    self._writers.discard(end)
                    end.transport.abort()  # a reset, as a crash or a network failure looks


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    while data := await reader.read(65536):
        await flowing.wait()
        writer.write(data)
        await writer.drain()
