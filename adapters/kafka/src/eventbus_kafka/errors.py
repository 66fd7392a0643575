"""The one place where aiokafka's exceptions become eventbus's (STYLE 7)."""

from __future__ import annotations

from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]

from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    MessageTooLargeError,
)

__all__ = ["is_fatal", "is_transient", "translate"]

# Errors that say "the cluster is not reachable or not ready yet": retried with backoff.
_TRANSIENT: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.GroupCoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupLoadInProgressError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.StaleMetadata,
    kafka_errors.KafkaUnavailableError,
    ConnectionError,
    OSError,
)

# Errors retrying cannot fix: the caller must change credentials, ACLs or configuration.
# Who we are was refused (the CLI exits 6):
_AUTHENTICATION: tuple[type[BaseException], ...] = (
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.SaslAuthenticationFailed,
)
# What we asked was refused, ACLs (the CLI exits 6):
_AUTHORIZATION: tuple[type[BaseException], ...] = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
)
_FATAL: tuple[type[BaseException], ...] = (
    *_AUTHENTICATION,
    *_AUTHORIZATION,
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidGroupIdError,
    kafka_errors.IncompatibleBrokerVersion,
    kafka_errors.UnsupportedVersionError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, kafka_errors.KafkaError) and bool(getattr(exc, "retriable", False))


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, _FATAL)


def translate(exc: BaseException, address: str, user: str = "") -> EventBusError:
    """The eventbus exception for a driver exception (the original becomes its ``__cause__``
    where the caller raises ``from``). ``user`` (`KafkaSettings.user`) is named in refusals."""
    if isinstance(exc, EventBusError):
        return exc
    if isinstance(exc, kafka_errors.MessageSizeTooLargeError | kafka_errors.RecordTooLargeError):
        return MessageTooLargeError(f"message too large for Kafka: {exc}")
    who = f" {user}" if user else ""
    refused = f"Kafka at {address} refused{who}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _AUTHENTICATION):
        return AuthenticationError(refused)
    if isinstance(exc, _AUTHORIZATION):
        return AuthorizationError(refused)
    if isinstance(exc, _FATAL):
        return ConfigurationError(refused)
    if is_transient(exc):
        return BrokerUnavailableError(address, f"{type(exc).__name__}: {exc}")
    return EventBusError(f"Kafka client error: {type(exc).__name__}: {exc}")
