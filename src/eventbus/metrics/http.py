"""Just enough HTTP/1.0 for ``/metrics``, ``/livez`` and ``/readyz``, on the bus's event loop.

Served by the loop that runs the handlers, not by a thread: a ``/livez`` answer then proves
the loop itself answers (a handler that blocks it makes the probe time out). Every response
closes its connection; a request that does not arrive within `REQUEST_TIMEOUT` is dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger

__all__ = ["Response", "get", "serve"]

log = get_logger("eventbus.metrics")

Response = tuple[int, str, bytes]
"""Status, content type, body."""

REQUEST_TIMEOUT = 10.0
_HEAD_LIMIT = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(
    host: str,
    port: int,
    respond: Callable[[str], Awaitable[Response]],
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started(port)`` with the bound port once listening
    (``port=0`` picks a free one)."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:  # port taken, address not ours: the operator must change something
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    async with listener:
        task_status.started(listener.extra(SocketAttribute.local_port))

        async def handle(stream: SocketStream) -> None:
            # Nothing may escape: an exception here would end the listener's task group.
            try:
                async with stream:
                    with anyio.move_on_after(REQUEST_TIMEOUT):
                        await _answer(stream, respond)
            except Exception:
                log.debug("metrics request failed", exc_info=True)

        await listener.serve(handle)


async def _answer(stream: SocketStream, respond: Callable[[str], Awaitable[Response]]) -> None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > _HEAD_LIMIT:
            return
        try:
            head += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    path = rest.split(" ", 1)[0].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        status, ctype, body = 405, "text/plain; charset=utf-8", b"GET only\n"
    else:
        status, ctype, body = await respond(path)
    header = (
        f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    await stream.send(header if method == "HEAD" else header + body)


async def get(host: str, port: int, path: str, within: float = 3.0) -> tuple[int, bytes]:
    """``GET path``: the status and the body. Raises `OSError` (or `TimeoutError`) when the
    server cannot be reached or does not answer within ``within`` seconds."""
    with anyio.fail_after(within):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("latin-1"))
            chunks: list[bytes] = []
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise OSError(f"not an HTTP response from {host}:{port}{path}") from exc
    return status, body
