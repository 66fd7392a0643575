"""The exception tree users catch; adapters translate driver exceptions into it at the boundary."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "EventBusError",
    "HandlerSignatureError",
    "HandlerTimeoutError",
    "LeaseLostError",
    "MessageTooLargeError",
    "NotFoundError",
    "PublishError",
    "Reject",
    "RequestTimeoutError",
    "ResponderError",
    "Retry",
    "StartupHookError",
    "UnknownSchemeError",
    "UnroutableError",
]


class EventBusError(Exception):
    """Base class of every error eventbus raises on purpose."""


class ConfigurationError(EventBusError, ValueError):
    """Bad URL, bad option, invalid name: the caller must change something."""


class UnknownSchemeError(ConfigurationError):
    """No installed transport handles the URL's scheme."""

    def __init__(self, scheme: str, installed: list[str]) -> None:
        self.scheme = scheme
        self.installed = installed
        shown = ", ".join(f"{s}://" for s in installed) or "none"
        super().__init__(
            f"no eventbus transport is installed for scheme {scheme!r}; installed: {shown} "
            f"(Kafka needs 'pip install eventbus-kafka', RabbitMQ 'pip install eventbus-rabbitmq')"
        )


class AuthenticationError(ConfigurationError, PermissionError):
    """The broker refused who we are: password, SASL credentials, client certificate, or the
    server's certificate or hostname. Never retried; the CLI exits 6."""


class AuthorizationError(ConfigurationError, PermissionError):
    """The broker knows who we are and refused what we asked: ACLs, vhost or queue permissions.
    Never retried; the CLI exits 6."""


class HandlerSignatureError(ConfigurationError, TypeError):
    """A handler's parameters cannot be injected; raised at decoration time."""


class HandlerTimeoutError(EventBusError, TimeoutError):
    """An attempt ran longer than its subscription's ``timeout=`` and was cancelled. It counts
    as a failed attempt: the retry policy decides what follows (``give_up_on`` may name it),
    and a dead letter names it in ``eventbus-error-type``."""

    def __init__(self, handler: str, timeout: float, attempt: int) -> None:
        self.handler = handler
        self.timeout = timeout
        self.attempt = attempt
        super().__init__(
            f"handler {handler} did not finish attempt {attempt} within timeout={timeout:g}s"
        )


class RequestTimeoutError(EventBusError, TimeoutError):
    """`EventBus.request` got no reply within its ``timeout``. The request may still be
    handled later; its reply is then dropped and counted (``bus.request_stats.late``)."""

    def __init__(self, kind: str, name: str, timeout: float, correlation_id: str) -> None:
        self.kind = kind
        self.name = name
        self.timeout = timeout
        self.correlation_id = correlation_id
        super().__init__(
            f"no reply from {kind} {name!r} within {timeout:g}s (correlation id {correlation_id})"
        )


class ResponderError(EventBusError):
    """The responder of an `EventBus.request` failed: its handler gave up (or the request was
    undecodable, expired or rejected) and the request went to its dead-letter queue. Carries
    the responder's error type and message, and the dead-letter reason."""

    def __init__(self, name: str, error_type: str, error_message: str, reason: str) -> None:
        self.name = name
        self.error_type = error_type
        self.error_message = error_message
        self.reason = reason
        super().__init__(
            f"the responder of {name!r} failed ({reason}): {error_type}: {error_message}"
        )


class BrokerUnavailableError(EventBusError, ConnectionError):
    """The broker at ``address`` could not be reached (after the bounded wait)."""

    def __init__(self, address: str, detail: str = "") -> None:
        self.address = address
        super().__init__(f"cannot reach broker at {address}" + (f": {detail}" if detail else ""))


class NotFoundError(EventBusError, LookupError):
    """What an operation reads does not exist on the broker, and the operation refuses to
    create it: the ``eventbus dlq`` commands on a dead-letter queue nobody made (a typo would
    otherwise leave an empty queue or topic behind). The CLI exits 7."""

    def __init__(self, what: str, name: str) -> None:
        self.name = name
        super().__init__(f"no {what} {name!r}")


class PublishError(EventBusError):
    """The broker did not confirm a publish.

    For batches, ``failures`` maps the index of each failed message to its cause; the other
    messages were confirmed.
    """

    def __init__(self, message: str, failures: Mapping[int, BaseException] | None = None) -> None:
        super().__init__(message)
        self.failures: dict[int, BaseException] = dict(failures or {})


class UnroutableError(PublishError):
    """The broker had nowhere to put the message (e.g. a RabbitMQ exchange with no bound queue)."""


class MessageTooLargeError(PublishError):
    """The message exceeds what the broker accepts."""


class LeaseLostError(EventBusError):
    """An inbox transaction could not record its key as done and was rolled back.

    The claim's lease ran out while the handler worked, and another worker claimed or completed
    the key meanwhile. Nothing this attempt wrote was committed; the dispatcher claims the key
    again (without counting an attempt), and the other worker's attempt decides.
    """


class StartupHookError(EventBusError, RuntimeError):
    """A ``@bus.on_startup`` hook raised; ``hook`` is its qualified name, the error its
    ``__cause__``. The bus stops (its handlers drain) and ``eventbus run`` exits 7."""

    def __init__(self, hook: str, cause: BaseException) -> None:
        self.hook = hook
        super().__init__(f"startup hook {hook} failed: {type(cause).__name__}: {cause}")


class Reject(Exception):
    """Raise from a handler to dead-letter the message at once, without retries."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "rejected by handler")
        self.reason = reason


class Retry(Exception):
    """Raise from a handler to ask for another attempt after ``delay`` seconds.

    The attempt counts against the subscription's ``RetryPolicy.max_attempts``; when none are
    left the message is dead-lettered as ``retries-exhausted``.
    """

    def __init__(self, delay: float | None = None, reason: str | None = None) -> None:
        if delay is not None and not (0 <= delay < math.inf):
            # A delay that never comes would hold the key lane and an in-flight slot forever.
            raise ValueError(f"Retry delay must be finite seconds >= 0, got {delay!r}")
        super().__init__(reason or "retry requested by handler")
        self.delay = delay
