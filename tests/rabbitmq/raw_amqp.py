"""A bare AMQP 0-9-1 publisher written with pamqp, for tests that need messages aiormq would
never send: aiormq fills in a ``message_id`` on every publish, a foreign producer may not.

    await raw_publish(url, exchange="orders", routing_key="", body=b"{}", headers={...})

One connection per call: handshake (PLAIN), a channel in confirm mode, one publish per body,
each confirmed by the broker, then a polite close.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import body as content
from pamqp import commands, frame, header, heartbeat
from pamqp.base import Frame

__all__ = ["raw_publish"]

_FRAME_HEADER = 7  # type (1), channel (2), size (4); then the payload and the frame end octet


class _Wire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, value: Frame | header.ContentHeader | content.ContentBody, channel: int) -> None:
        self.writer.write(frame.marshal(value, channel))

    async def expect(self, kind: type[Any]) -> Any:
        """The next method frame, which must be a ``kind`` (heartbeats are skipped)."""
        while True:
            head = await self.reader.readexactly(_FRAME_HEADER)
            (size,) = struct.unpack(">I", head[3:7])
            rest = await self.reader.readexactly(size + 1)
            _consumed, _channel, value = frame.unmarshal(head + rest)
            if isinstance(value, heartbeat.Heartbeat):
                continue
            if not isinstance(value, kind):
                raise AssertionError(f"expected {kind.__name__}, the broker sent {value!r}")
            return value


async def raw_publish(
    url: str,
    *,
    exchange: str,
    routing_key: str,
    bodies: Sequence[bytes],
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> None:
    """Publish each of ``bodies`` with the given ``headers`` and no other property than
    ``delivery_mode`` (and ``message_id`` only if given); returns once all are confirmed."""
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5672)
    wire = _Wire(reader, writer)
    try:
        writer.write(frame.marshal(header.ProtocolHeader(), 0))
        await wire.expect(commands.Connection.Start)
        wire.send(
            commands.Connection.StartOk(
                client_properties={"connection_name": "eventbus-tests raw publisher"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            ),
            0,
        )
        tune = await wire.expect(commands.Connection.Tune)
        wire.send(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0)
        wire.send(commands.Connection.Open(virtual_host=vhost), 0)
        await wire.expect(commands.Connection.OpenOk)
        wire.send(commands.Channel.Open(), 1)
        await wire.expect(commands.Channel.OpenOk)
        wire.send(commands.Confirm.Select(), 1)
        await wire.expect(commands.Confirm.SelectOk)
        for body in bodies:
            properties = commands.Basic.Properties(
                headers=headers, delivery_mode=2, message_id=message_id
            )
            wire.send(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
            wire.send(header.ContentHeader(0, len(body), properties), 1)
            wire.send(content.ContentBody(body), 1)  # bodies here are smaller than frame_max
            await writer.drain()
            await wire.expect(commands.Basic.Ack)
        wire.send(
            commands.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 0
        )
        await wire.expect(commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()
