"""Shared by the security tests: the throwaway certificates ``scripts/brokers`` makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from eventbus import EventBus
from eventbus.testing.conformance import wait_for


@dataclass(frozen=True)
class Certs:
    """scripts/brokers.d/certs.sh's files: ``certs["client.key"]`` is that file's path."""

    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


def secured_kafka_url(base: str, *, host: str | None = None, **options: str) -> str:
    """``base`` (``kafka://host:port``) with ``options`` as its query; ``host`` replaces its host
    name, keeping the port."""
    hostport = base.split("://", 1)[1].rstrip("/")
    if host is not None:
        hostport = f"{host}:{hostport.rsplit(':', 1)[1]}"
    return f"kafka://{hostport}?{urlencode(options)}"


def kafka_scram(certs: Certs, user: str, password_file: str, **more: str) -> dict[str, str]:
    """Options for SASL_SSL with SCRAM-SHA-512 as ``user``."""
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": user,
        "sasl_password_file": password_file,
        "ssl_cafile": certs["ca.pem"],
        **more,
    }


def kafka_mtls(certs: Certs, **more: str) -> dict[str, str]:
    """Options for SSL with the client certificate (User:eventbus-client)."""
    return {
        "security_protocol": "SSL",
        "ssl_cafile": certs["ca.pem"],
        "ssl_certfile": certs["client.pem"],
        "ssl_keyfile": certs["client.key"],
        **more,
    }


async def round_trip(url: str, queue: str) -> list[int]:
    """Send 0, 1, 2 to ``queue`` over ``url`` and consume them on the same bus; what arrived,
    sorted (Kafka spreads keyless messages over partitions, in no order between them)."""
    bus = EventBus(url)
    got: list[int] = []

    @bus.consume(queue)
    async def handle(n: int) -> None:
        got.append(n)

    async with bus:
        for n in range(3):
            await bus.send(queue, n)
        await wait_for(lambda: len(got) == 3, what="three over TLS")
    return sorted(got)
