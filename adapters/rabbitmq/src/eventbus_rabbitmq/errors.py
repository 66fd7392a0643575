"""aiormq exceptions -> eventbus exceptions, in one place (STYLE 7)."""

from __future__ import annotations

import asyncio

from aiormq import exceptions as amqp

from eventbus.errors import (
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    MessageTooLargeError,
)

__all__ = ["CONNECTION_LOST", "is_connection_lost", "translate"]

CONNECTION_LOST: tuple[type[BaseException], ...] = (
    amqp.AMQPConnectionError,
    amqp.ChannelInvalidStateError,  # the channel (or its connection) is already closed
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
"""Failures that another attempt on a fresh connection can fix."""


def is_connection_lost(error: BaseException) -> bool:
    if isinstance(error, ConfigurationError):
        # AuthenticationError and AuthorizationError are PermissionErrors, hence OSErrors, but
        # another attempt cannot fix them.
        return False
    if isinstance(error, amqp.ChannelClosed) and not isinstance(error, _PERMANENT_CHANNEL):
        # A channel closed without a reply code we recognise (e.g. its connection died).
        return True
    return isinstance(error, CONNECTION_LOST)


_PERMANENT_CHANNEL = (
    amqp.ChannelAccessRefused,
    amqp.ChannelNotFoundEntity,
    amqp.ChannelLockedResource,
    amqp.ChannelPreconditionFailed,
)


def translate(error: BaseException, *, address: str, what: str) -> EventBusError:
    """The eventbus error for a broker refusal while doing ``what`` (e.g. "declare queue x")."""
    if isinstance(error, EventBusError):
        return error
    if isinstance(error, amqp.ChannelPreconditionFailed):
        text = str(error)
        if "larger than" in text and "max size" in text:
            return MessageTooLargeError(f"{what}: {text}")
        # Usually a queue or exchange that exists with other arguments (classic vs quorum...).
        return ConfigurationError(
            f"RabbitMQ refused to {what}: {text}. An entity with that name probably exists with "
            f"other settings (queue_type, partitions); delete it or use the same settings."
        )
    if isinstance(error, amqp.ChannelAccessRefused):
        return AuthorizationError(
            f"RabbitMQ at {address} refused to {what}: access refused ({error}); check the "
            "user's permissions"
        )
    if isinstance(error, amqp.ChannelLockedResource):
        return ConfigurationError(f"RabbitMQ refused to {what}: in exclusive use ({error})")
    if is_connection_lost(error):
        return BrokerUnavailableError(address, f"{what}: {error!r}")
    return EventBusError(f"RabbitMQ failed to {what}: {error!r}")
