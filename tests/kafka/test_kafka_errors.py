"""Driver errors become eventbus's in one place: refused credentials and ACLs are the access
errors the CLI exits 6 on, never retried; outages are retried."""

import pytest
from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]
from eventbus_kafka.errors import is_fatal, is_transient, translate

from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
)


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        (kafka_errors.SaslAuthenticationFailed, AuthenticationError),
        (kafka_errors.AuthenticationFailedError, AuthenticationError),
        (kafka_errors.UnsupportedSaslMechanismError, AuthenticationError),
        (kafka_errors.TopicAuthorizationFailedError, AuthorizationError),
        (kafka_errors.GroupAuthorizationFailedError, AuthorizationError),
        (kafka_errors.ClusterAuthorizationFailedError, AuthorizationError),
        (kafka_errors.InvalidTopicError, ConfigurationError),
        (kafka_errors.KafkaConnectionError, BrokerUnavailableError),
        (kafka_errors.NotLeaderForPartitionError, BrokerUnavailableError),
        (kafka_errors.MessageSizeTooLargeError, MessageTooLargeError),
    ],
)
def test_translation(driver: type[Exception], expected: type[Exception]) -> None:
    error = translate(driver(), "k1:9092")
    assert type(error) is expected
    if expected in (AuthenticationError, AuthorizationError):
        assert isinstance(error, PermissionError) and is_fatal(driver())
        assert "k1:9092" in str(error)
    if expected is BrokerUnavailableError:
        assert is_transient(driver()) and not is_fatal(driver())
