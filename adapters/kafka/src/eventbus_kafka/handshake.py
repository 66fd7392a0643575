"""Why a secured bootstrap failed, when no retry can fix it. aiokafka's bootstrap only logs each
server's error and raises "Unable to bootstrap", so a wrong password or a refused certificate
would look like an unreachable broker until ``connect_timeout``: one direct connection with the
same settings shows the real error."""

from __future__ import annotations

import asyncio

from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]

from eventbus.errors import AuthenticationError
from eventbus.transports.tls import tls_refused
from eventbus_kafka.url import KafkaSettings

__all__ = ["refusal"]

_PROBE_TIMEOUT = 5.0


async def refusal(settings: KafkaSettings) -> AuthenticationError | None:
    """The `AuthenticationError` a bootstrap server gives these settings, or None (plaintext,
    or any failure that may pass: a broker still starting, a network error). The servers are
    tried in turn, each for at most 5 s; the caller bounds the whole."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    options = settings.client_options()
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                conn = await create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=settings.client_id,
                    request_timeout_ms=int(_PROBE_TIMEOUT * 1000),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=settings.security_protocol,
                    sasl_mechanism=options.get("sasl_mechanism"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                )
        except (
            kafka_errors.SaslAuthenticationFailed,
            kafka_errors.AuthenticationFailedError,
            kafka_errors.UnsupportedSaslMechanismError,
        ) as exc:
            return AuthenticationError(
                f"Kafka at {server} refused {settings.user} ({settings.sasl_mechanism}): {exc}"
            )
        except Exception as exc:
            refused = tls_refused(exc, "Kafka", server, settings.user)
            if refused is not None:
                return refused
        else:
            conn.close()
    return None
