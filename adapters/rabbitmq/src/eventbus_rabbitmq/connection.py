"""One AMQP connection, re-established with exponential backoff when it is lost.

There is no background reconnect task: whoever needs the connection (a publish, a subscription's
iterator) calls `Connector.get`, which reconnects under a lock. Publishers pass a deadline and get
`BrokerUnavailableError` when it passes; subscriptions wait as long as it takes. aio-pika's
``RobustConnection`` is not used: it retries on a fixed interval and restores consumers behind
our back, while eventbus must decide itself what a lost channel means for unsettled deliveries.

The transport keeps two connectors, one for publishing and one for consuming: RabbitMQ blocks a
publishing connection under memory or disk alarms, and acks from consumers must still get
through then (that is what lets the alarm clear).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiormq
from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection

from eventbus.backoff import Backoff
from eventbus.errors import AuthenticationError, AuthorizationError, BrokerUnavailableError
from eventbus.loggers import get_logger
from eventbus.transports.tls import tls_refused
from eventbus_rabbitmq.url import Settings

__all__ = ["Connector", "open_channel"]

log = get_logger("eventbus.rabbitmq")


class Connector:
    def __init__(self, settings: Settings, purpose: str) -> None:
        self._settings = settings
        self._purpose = purpose
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        # Resets only once a connection stayed up a while: one that the broker drops right
        # after the handshake keeps backing off instead of reconnecting in a tight loop.
        self._backoff = Backoff(0.1, 5.0)
        self._last_error: BaseException | None = None
        self._not_before = 0.0  # event loop time: no connection attempt before it
        # The URL's ``name`` option names the connections in the broker's tools; each gets its
        # purpose appended (aiormq would otherwise let our default name override it).
        given = parse_qs(urlsplit(settings.amqp_url).query).get("name")
        self._connection_name = f"{given[0] if given else 'eventbus'} {purpose}"
        self.generation = 0
        """Incremented on every new connection: things bound to an older one are stale."""

    @property
    def name(self) -> str:
        """The connection name the broker's tools show (``rabbitmqctl list_connections``)."""
        return self._connection_name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def current(self) -> AbstractConnection | None:
        """The open connection, if there is one right now (never connects)."""
        conn = self._connection
        return conn if conn is not None and not conn.is_closed else None

    async def get(self, within: float | None) -> AbstractConnection:
        """The open connection, connecting first if needed; ``within=None`` waits forever.

        Raises `BrokerUnavailableError` naming the broker when the deadline passes, and at once
        for errors that waiting cannot fix: `AuthenticationError` (credentials, the server's
        certificate) and `AuthorizationError` (an unknown vhost or no access to it)."""
        conn = self.current
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(within):
                return await self._reconnect()
        except TimeoutError:
            last = f" (last error: {self._last_error})" if self._last_error else ""
            raise BrokerUnavailableError(
                self._settings.address, f"no connection within {within:g} s{last}"
            ) from None

    async def _reconnect(self) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                if self._closed:
                    raise BrokerUnavailableError(self._settings.address, "transport closed")
                conn = self.current
                if conn is not None:
                    return conn
                if self._connection is not None:
                    # The last connection was lost. Waiting first (and longer each time, unless
                    # it had stayed up a while) keeps a broker that drops every connection
                    # right after the handshake from being reconnected to in a tight loop.
                    self._connection = None
                    delay = self._backoff.next()
                    self._not_before = loop.time() + delay
                    log.warning(
                        "RabbitMQ %s connection to %s lost; reconnecting in %.1f s",
                        self._purpose,
                        self._settings.address,
                        delay,
                    )
                # Kept across calls: a caller whose deadline ends the wait does not shorten
                # the next caller's.
                if (wait := self._not_before - loop.time()) > 0:
                    await asyncio.sleep(wait)
                    continue  # closed meanwhile?
                try:
                    # Bounded per attempt: a black-holed host would otherwise hang in connect().
                    async with asyncio.timeout(self._settings.connect_timeout):
                        conn = await aiormq.connect(
                            self._settings.amqp_url,
                            context=self._settings.tls_context,
                            client_properties={"connection_name": self._connection_name},
                        )
                # Waiting cannot fix these: raised at once, never retried (DESIGN 8).
                except (
                    amqp_errors.AuthenticationError,
                    amqp_errors.ProbableAuthenticationError,
                ) as e:
                    raise AuthenticationError(
                        f"RabbitMQ at {self._settings.address} refused the credentials of "
                        f"{self._settings.user!r}: access refused ({e}); check the user and "
                        "password"
                    ) from e
                except amqp_errors.ConnectionNotAllowed as e:  # unknown vhost, or no access
                    raise self._vhost_refused(str(e)) from e
                except amqp_errors.InvalidFrameError as e:
                    if not _refused_open(e):
                        raise
                    raise self._vhost_refused(
                        "connection.close in answer to connection.open"
                    ) from e
                except (TimeoutError, OSError, amqp_errors.AMQPError) as e:
                    refused = tls_refused(
                        e, "RabbitMQ", self._settings.address, repr(self._settings.user)
                    )
                    if refused is not None:  # an OSError too, but waiting cannot fix it
                        raise refused from e
                    self._last_error = e
                    delay = self._backoff.next()
                    # Until a first connection, every caller waits with a deadline and its
                    # BrokerUnavailableError carries the last error: a warning per attempt
                    # would only repeat it (pages of them from a one-shot `eventbus` command).
                    log.log(
                        logging.WARNING if self.generation else logging.DEBUG,
                        "RabbitMQ %s connection to %s failed (%s); retrying in %.1f s",
                        self._purpose,
                        self._settings.address,
                        e or type(e).__name__,
                        delay,
                    )
                    self._not_before = loop.time() + delay
                    continue
                self._connection = conn
                self._backoff.up()
                self._last_error = None
                self.generation += 1
                if self.generation > 1:
                    log.info("RabbitMQ %s connection re-established", self._purpose)
                return conn

    def _vhost_refused(self, detail: str) -> AuthorizationError:
        vhost = unquote(urlsplit(self._settings.amqp_url).path[1:]) or "/"
        return AuthorizationError(
            f"RabbitMQ at {self._settings.address} refused to open vhost {vhost!r} ({detail}): "
            f"it does not exist, or the user may not use it"
        )

    async def close(self) -> None:
        self._closed = True
        conn, self._connection = self._connection, None
        if conn is not None and not conn.is_closed:
            try:
                await conn.close()
            except (TimeoutError, OSError, amqp_errors.AMQPError):
                log.debug("error while closing the RabbitMQ connection", exc_info=True)


def _refused_open(error: amqp_errors.InvalidFrameError) -> bool:
    """aiormq 7 reports the broker's ``connection.close`` (530 NOT_ALLOWED: no such vhost, or
    no access to it) in answer to ``connection.open`` only in this error's text."""
    text = str(error)
    return "OpenOk" in text and "Connection.Close" in text


async def open_channel(conn: AbstractConnection, **options: Any) -> AbstractChannel:
    """``conn.channel(**options)``. aiormq raises a bare ``RuntimeError`` when the connection
    closed before the channel could open; it is raised here as aiormq's `AMQPConnectionError`,
    a lost connection, which every caller already retries on a fresh one or reports as the
    broker being unavailable (DESIGN 3.9)."""
    try:
        return await conn.channel(**options)
    except amqp_errors.ChannelInvalidStateError:
        raise  # a RuntimeError too, and already counted as a lost connection
    except RuntimeError as exc:
        if not conn.is_closed:
            raise
        raise amqp_errors.AMQPConnectionError(
            f"the connection closed before a channel could open ({exc})"
        ) from exc
