#!/usr/bin/env python3
"""Is a Kafka broker serving clients at HOST:PORT?  (used by scripts/brokers)

Standard library only, so it runs before any virtualenv exists. It speaks the
wire protocol directly: an ApiVersions request (v0, which every broker answers),
then a Metadata request for no topics. A KRaft broker lists itself in Metadata
only once it has registered with the controller, caught up with the metadata
log and been unfenced, i.e. once producers and consumers can really use it.

Exit 0 and print "<node ids> <cluster id>" when ready; exit 1 with the reason
on stderr otherwise. Usage: kafka_probe.py [HOST:PORT] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
# Non-flexible Metadata versions whose layout this probe encodes and decodes.
METADATA_VERSIONS = range(8, 3, -1)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")


def _request(
    sock: socket.socket, api_key: int, version: int, correlation: int, body: bytes
) -> _Reader:
    client_id = b"eventbus-brokers-probe"
    header = struct.pack(">hhih", api_key, version, correlation, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
    reader = _Reader(_recv_exactly(sock, size))
    if reader.take(">i") != correlation:
        raise RuntimeError("response correlation id mismatch")
    return reader


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def probe(host: str, port: int, timeout: float) -> str:
    """Return "<node ids> <cluster id>" or raise with the reason the broker is not ready."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        reader = _request(sock, API_VERSIONS, 0, 1, b"")
        error = reader.take(">h")
        if error:
            raise RuntimeError(f"ApiVersions error code {error}")
        ranges = {}
        for _ in range(reader.take(">i")):
            key, low, high = reader.take(">h"), reader.take(">h"), reader.take(">h")
            ranges[key] = (low, high)
        low, high = ranges.get(API_METADATA, (0, -1))
        version = next((v for v in METADATA_VERSIONS if low <= v <= high), None)
        if version is None:
            raise RuntimeError(f"broker offers Metadata v{low}-v{high}, probe speaks v4-v8")
        body = struct.pack(">ib", 0, 0)  # no topics, no auto-creation
        if version >= 8:
            body += struct.pack(">bb", 0, 0)  # no authorized-operations lists
        reader = _request(sock, API_METADATA, version, 2, body)
        reader.take(">i")  # throttle_time_ms
        nodes = []
        for _ in range(reader.take(">i")):
            nodes.append(reader.take(">i"))
            reader.string()  # host
            reader.take(">i")  # port
            reader.string()  # rack
        cluster_id = reader.string()
        if not nodes:
            raise RuntimeError("broker answers but lists no live brokers yet (still starting)")
        return f"{','.join(map(str, nodes))} {cluster_id}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    try:
        print(probe(host or "127.0.0.1", int(port), args.timeout))
    except (OSError, RuntimeError, struct.error) as exc:
        print(f"kafka not ready at {args.address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
