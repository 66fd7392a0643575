"""eventbus: async messaging over Kafka, RabbitMQ and memory with acks, retries, dead letters,
per-key ordering, deduplication and graceful shutdown done once, correctly."""

from eventbus.batch import Batch
from eventbus.breaker import CircuitBreaker
from eventbus.bus import EventBus
from eventbus.codecs import AsyncCodec, Codec, JsonCodec
from eventbus.dedup import ClaimResult, DedupStore, InboxStore, MemoryDedupStore
from eventbus.dispatch.invoke import Handler, Middleware
from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    HandlerSignatureError,
    HandlerTimeoutError,
    MessageTooLargeError,
    NotFoundError,
    PublishError,
    Reject,
    RequestTimeoutError,
    ResponderError,
    Retry,
    StartupHookError,
    UnknownSchemeError,
    UnroutableError,
)
from eventbus.message import Delivery, Message
from eventbus.metrics.config import MetricsConfig
from eventbus.ratelimit import RateLimit, RedisRateLimiter
from eventbus.replies import RequestStats
from eventbus.retry import RetryPolicy

__version__ = "0.2.0.dev0"

__all__ = [
    "AsyncCodec",
    "AuthenticationError",
    "AuthorizationError",
    "Batch",
    "BrokerUnavailableError",
    "CircuitBreaker",
    "ClaimResult",
    "Codec",
    "ConfigurationError",
    "DedupStore",
    "Delivery",
    "EventBus",
    "EventBusError",
    "Handler",
    "HandlerSignatureError",
    "HandlerTimeoutError",
    "InboxStore",
    "JsonCodec",
    "MemoryDedupStore",
    "Message",
    "MessageTooLargeError",
    "MetricsConfig",
    "Middleware",
    "NotFoundError",
    "PublishError",
    "RateLimit",
    "RedisRateLimiter",
    "Reject",
    "RequestStats",
    "RequestTimeoutError",
    "ResponderError",
    "Retry",
    "RetryPolicy",
    "StartupHookError",
    "UnknownSchemeError",
    "UnroutableError",
    "__version__",
]
