"""`EventBus`: the registry of handlers, publish/send, and the lifecycle."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import anyio
from anyio.abc import TaskGroup

from eventbus.batch import Batch
from eventbus.breaker import CircuitBreaker
from eventbus.codecs.base import AsyncCodec, Codec, Encoded
from eventbus.codecs.json import JsonCodec
from eventbus.dedup.base import BatchInboxStore, DedupStore, InboxStore
from eventbus.dedup.memory import MemoryDedupStore
from eventbus.dispatch.consume import sole_error
from eventbus.dispatch.current import HANDLING
from eventbus.dispatch.expiry import expiry_header
from eventbus.dispatch.handler import inspect_handler
from eventbus.dispatch.invoke import Middleware
from eventbus.dispatch.options import DEFAULT_ACK_TIMEOUT, SubscriptionOptions
from eventbus.dispatch.runner import SubscriptionRunner
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import (
    ConfigurationError,
    HandlerSignatureError,
    RequestTimeoutError,
    StartupHookError,
    UnroutableError,
)
from eventbus.headers import CAUSATION_ID, DATASCHEMA, EXPIRES_AT
from eventbus.loggers import get_logger
from eventbus.message import Message, new_message_id
from eventbus.metrics.config import MetricsConfig, require_prometheus_client
from eventbus.metrics.recorder import BusMetrics
from eventbus.outgoing import check_name as _check_name
from eventbus.outgoing import checked_headers as _checked_headers
from eventbus.outgoing import encode_with as _encode_with
from eventbus.ratelimit.config import RateLimit
from eventbus.replies import Replies, RequestStats, Waiter, plain_type
from eventbus.retry import DEFAULT_RETRY, RetryPolicy
from eventbus.schedule import not_before
from eventbus.transports.base import Destination, Kind, Transport
from eventbus.transports.registry import transport_for_url

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from eventbus.metrics.service import MetricsService
    from eventbus.outbox.base import Outbox
    from eventbus.outbox.relay import OutboxRelay
    from eventbus.tracing import Tracing

__all__ = ["EventBus"]

log = get_logger("eventbus")

F = TypeVar("F", bound=Callable[..., Any])

_KNOWN_DESTINATIONS = 1024
"""Names of each kind whose `Destination` a bus keeps: an application publishing to ever new
names (one per tenant, say) does not grow it without bound; past it they are built each time."""

REQUEST_EXPIRY_MARGIN = 5.0
"""Seconds a request outlives its timeout before it expires unhandled: room for clock skew
between requester and responder, whose wall clocks the expiry compares."""


class EventBus:
    """One publish/subscribe and queue API over a pluggable transport (DESIGN 2).

    ``url`` picks the transport by scheme (``memory://``, ``kafka://host:port``,
    ``amqp://user:pass@host:port/``); ``None`` reads ``EVENTBUS_URL``, else ``memory://``.
    Handlers are registered with `subscribe` / `consume` before the bus starts. ``async with
    bus:`` connects and starts every handler; when the block is entered every subscription is
    live. Leaving it stops fetching, lets in-flight handlers finish within ``graceful_timeout``
    seconds, settles, and closes; a handler still running then is cancelled and its message is
    redelivered later, never acked.

    ``tracing``: OpenTelemetry tracing (needs the ``eventbus[otel]`` extra), off by default:
    ``True`` uses the global tracer provider, or pass a ``TracerProvider`` (docs/observability.md).

    ``metrics``: collect Prometheus metrics (``True``, or a `MetricsConfig` that also serves
    ``/metrics``, ``/livez`` and ``/readyz`` on a port); needs ``eventbus[prometheus]``.

    ``outbox``: an `eventbus.outbox.PostgresOutbox` or `SqliteOutbox` (or several) whose relay
    runs while the bus runs, under ``bus.publisher()`` too, publishing what committed
    (docs/outbox.md). It encodes with the bus's codec unless it was given its own.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        transport: Transport | None = None,
        codec: Codec | AsyncCodec | None = None,
        dedup_store: DedupStore | None = None,
        middleware: Sequence[Middleware] = (),
        graceful_timeout: float = 30.0,
        tracing: bool | TracerProvider = False,
        metrics: bool | MetricsConfig = False,
        outbox: Outbox | Sequence[Outbox] | None = None,
    ) -> None:
        if transport is not None and url is not None:
            raise ConfigurationError("give EventBus either a url or a transport, not both")
        if graceful_timeout < 0:
            raise ConfigurationError("graceful_timeout must be >= 0 seconds")
        if url == "":
            raise ConfigurationError("empty eventbus URL; pass None to use EVENTBUS_URL")
        self.url = url or os.environ.get("EVENTBUS_URL") or "memory://"
        # Resolve the transport now so a bad URL or a missing adapter fails at construction.
        self.transport: Transport = transport or transport_for_url(self.url)
        self.codec: Codec | AsyncCodec = codec or JsonCodec()
        # One of the two is set: which kind the codec is, decided once, not per message.
        self._async_codec: AsyncCodec | None = None
        self._sync_codec: Codec | None = None
        if inspect.iscoroutinefunction(self.codec.encode):
            self._async_codec = cast(AsyncCodec, self.codec)
        else:
            self._sync_codec = cast(Codec, self.codec)
        self._dedup_store = dedup_store
        self._dedup_store_given = dedup_store is not None  # TestBus swaps only the default one
        self.middleware = tuple(middleware)
        self.graceful_timeout = graceful_timeout
        self._subscribers: list[Subscriber] = []
        self._destinations: dict[Kind, dict[str, Destination]] = {"topic": {}, "queue": {}}
        """`_destination`'s: by kind, then name."""
        self._startup: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._shutdown: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._runners: list[SubscriptionRunner] = []
        self._task_group: TaskGroup | None = None
        self._hooks_scope: anyio.CancelScope | None = None
        self._forwarder_scope: anyio.CancelScope | None = None
        self._drain_scope: anyio.CancelScope | None = None
        self._running = False
        self._consuming = False
        self._tracing: Tracing | None = None
        if tracing:  # a provider, or True
            self._tracing = _tracing(tracing, self.transport, None if transport else self.url)
        self._draining = False
        self._metrics: BusMetrics | None = None
        """None unless metrics are on: the hot path checks nothing else."""
        self._metrics_service: MetricsService | None = None
        self._replies = Replies()
        if metrics:
            self.enable_metrics(metrics)
        self.outbox_relay: OutboxRelay | None = None
        """The relay of ``outbox=`` (its `stats`), or None."""
        if outbox is not None:
            from eventbus.outbox.relay import OutboxRelay

            self.outbox_relay = OutboxRelay(
                outbox,
                self._send,
                codec=self.codec,
                max_message_size=lambda: self.transport.capabilities.max_message_size,
            )

    # -- metrics and health -----------------------------------------------------------------

    def enable_metrics(
        self,
        config: bool | MetricsConfig = True,
        *,
        on_listening: Callable[[int], None] | None = None,
    ) -> None:
        """Turn metrics on before the bus starts (``eventbus run --metrics-port`` does this).
        ``on_listening`` is called with the bound port once the endpoints serve."""
        if self._running:
            raise RuntimeError("enable metrics before the bus starts")
        require_prometheus_client()
        from eventbus.metrics.service import MetricsService  # imports prometheus_client

        self._metrics = BusMetrics(
            config if isinstance(config, MetricsConfig) else MetricsConfig(),
            requests=self._replies.stats,
        )
        self._metrics_service = MetricsService(
            self._metrics, lambda: self.transport, lambda: self.ready, on_listening
        )

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """The bus's own Prometheus registry (to serve from an application's web server), or
        None when metrics are off."""
        return self._metrics_service.registry if self._metrics_service else None

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on while the bus runs, or None."""
        return self._metrics_service.port if self._metrics_service else None

    @property
    def ready(self) -> bool:
        """Connected, every subscription live and able to receive, and not stopping
        (``/readyz``)."""
        if not self._running or self._draining:
            return False
        return not self._consuming or (
            len(self._runners) == len(self._subscribers)
            and all(runner.connected for runner in self._runners)
        )

    # -- registration -----------------------------------------------------------------------

    @property
    def dedup_store(self) -> DedupStore:
        """The store ``dedup=True`` uses; a bounded in-memory one unless one was given."""
        if self._dedup_store is None:
            self._dedup_store = MemoryDedupStore()
        return self._dedup_store

    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        return tuple(self._subscribers)

    def subscribe(
        self,
        topic: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        max_in_flight: int | None = None,
        ack: Literal["auto", "manual"] = "auto",
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        retry: RetryPolicy | None = None,
        dead_letter: str | None = "auto",
        dedup: bool | DedupStore | None = None,
        dedup_key: Callable[[Message], str] | None = None,
        dedup_lease: float = 300.0,
        publish_to: str | None = None,
        send_to: str | None = None,
        breaker: CircuitBreaker | None = None,
        timeout: float | None = None,
        on_expired: Literal["dead-letter", "drop"] = "dead-letter",
        rate_limit: RateLimit | None = None,
        batch: Batch | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> Callable[[F], F]:
        """Register a handler for ``topic``. Every group gets every message; within a group each
        message goes to one consumer. ``group=None``: every running instance gets every message
        published while it runs (ephemeral broadcast). ``dedup_lease``: seconds a dedup claim
        holds; when a worker dies mid-handler, others wait this long before taking the message
        over, so keep it above the slowest handler's run time.

        ``publish_to`` (a topic) or ``send_to`` (a queue): where the handler's return value is
        published, with the handled message as its cause and its key (DESIGN 12); ``None``
        publishes nothing. A message with a reply-to gets the value as its reply instead.

        ``breaker``: a `CircuitBreaker`; past its failure ratio the subscription stops fetching
        and handlers wait, spending no attempt, until a probe attempt succeeds (DESIGN 11).
        ``timeout``: seconds one attempt of an async handler may run; a longer one is cancelled
        and fails with `HandlerTimeoutError` (the retry policy decides what follows). Refused on
        a synchronous handler, whose thread cannot be cancelled. ``on_expired``: what happens to
        a message published with ``ttl``/``expires_at`` that is found expired before an attempt:
        ``"dead-letter"`` (reason ``expired``) or ``"drop"`` (acked unhandled, counted in
        ``stats.expired``).
        ``rate_limit``: at most ``RateLimit(per_second, burst)`` handler starts (retries
        included), in this process or, with ``shared=RedisRateLimiter(url)``, across all of
        them; a start over the limit waits, it is never nacked (DESIGN 11).
        ``batch``: a `Batch`; the handler then takes lists (``list[Order]``, optionally
        ``list[Delivery]``) of up to ``max_size`` messages, gathered for at most ``max_wait``
        seconds (DESIGN 11).
        ``codec``: how this subscription decodes bodies (say an `eventbus.avro.AvroCodec`);
        None: the bus's codec."""
        _check_name("topic", topic)
        if group is not None:
            _check_name("group", group)
        options = self._options(
            concurrency=concurrency,
            max_in_flight=max_in_flight,
            ack=ack,
            ack_timeout=ack_timeout,
            retry=retry,
            dead_letter=dead_letter,
            dedup=dedup,
            dedup_key=dedup_key,
            dedup_lease=dedup_lease,
            returns=_returns(publish_to, send_to),
            breaker=breaker,
            timeout=timeout,
            on_expired=on_expired,
            rate_limit=rate_limit,
            batch=batch,
            codec=codec,
        )
        return self._register(topic, "topic", group, options)

    def consume(
        self,
        queue: str,
        *,
        concurrency: int = 1,
        max_in_flight: int | None = None,
        ack: Literal["auto", "manual"] = "auto",
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        retry: RetryPolicy | None = None,
        dead_letter: str | None = "auto",
        dedup: bool | DedupStore | None = None,
        dedup_key: Callable[[Message], str] | None = None,
        dedup_lease: float = 300.0,
        publish_to: str | None = None,
        send_to: str | None = None,
        breaker: CircuitBreaker | None = None,
        timeout: float | None = None,
        on_expired: Literal["dead-letter", "drop"] = "dead-letter",
        rate_limit: RateLimit | None = None,
        batch: Batch | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> Callable[[F], F]:
        """Register a handler for ``queue``: each message goes to exactly one consumer. Options
        as for `subscribe`, without ``group``."""
        _check_name("queue", queue)
        options = self._options(
            concurrency=concurrency,
            max_in_flight=max_in_flight,
            ack=ack,
            ack_timeout=ack_timeout,
            retry=retry,
            dead_letter=dead_letter,
            dedup=dedup,
            dedup_key=dedup_key,
            dedup_lease=dedup_lease,
            returns=_returns(publish_to, send_to),
            breaker=breaker,
            timeout=timeout,
            on_expired=on_expired,
            rate_limit=rate_limit,
            batch=batch,
            codec=codec,
        )
        return self._register(queue, "queue", None, options)

    def on_startup(
        self, func: Callable[[], Coroutine[Any, Any, None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """Run ``func`` in the background once every subscription is live (e.g. a producer
        loop); it is cancelled first when the bus stops."""
        if self._running:
            raise RuntimeError("register startup hooks before the bus starts")
        self._startup.append(func)
        return func

    def on_shutdown(
        self, func: Callable[[], Coroutine[Any, Any, None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """Run ``func`` when the bus stops, after the handlers drained and before the transport
        closes (so it can still publish); hooks run one after the other, in registration order,
        and one that fails is logged without keeping the others from running."""
        if self._running:
            raise RuntimeError("register shutdown hooks before the bus starts")
        self._shutdown.append(func)
        return func

    def _options(
        self,
        *,
        retry: RetryPolicy | None,
        dead_letter: str | None,
        dedup: bool | DedupStore | None,
        **options: Any,
    ) -> SubscriptionOptions:
        if self._running:
            raise RuntimeError("register handlers before the bus starts")
        if dead_letter not in ("auto", None):
            _check_name("dead-letter queue", dead_letter)
        store: DedupStore | None
        if dedup is True:
            store = self.dedup_store
        elif dedup is None or dedup is False:
            store = None
        else:
            store = dedup
        return SubscriptionOptions(
            retry=retry or DEFAULT_RETRY, dead_letter=dead_letter, dedup=store, **options
        )

    def _register(
        self, name: str, kind: Kind, group: str | None, options: SubscriptionOptions
    ) -> Callable[[F], F]:
        store = options.dedup

        def decorator(func: F) -> F:
            inbox_types = (store.inbox_type,) if isinstance(store, InboxStore) else ()
            spec = inspect_handler(func, inbox_types, batch=options.batch is not None)
            if options.ack == "manual" and not any(kind == "delivery" for _, kind in spec.params):
                raise HandlerSignatureError(
                    f"handler {spec.name}: ack='manual' needs a parameter annotated Delivery "
                    "to settle with"
                )
            batch_inbox = spec.batch and spec.inbox_type is not None
            if batch_inbox and not isinstance(store, BatchInboxStore):
                raise HandlerSignatureError(
                    f"handler {spec.name}: a batch handler that takes the inbox needs a store "
                    f"that records many keys in one transaction (inbox_many); {store!r} has none"
                )
            if options.timeout is not None and not spec.is_async:
                raise HandlerSignatureError(
                    f"handler {spec.name}: timeout= needs an async handler; a synchronous one "
                    "runs in a thread, which cannot be cancelled"
                )
            if options.returns is not None and spec.return_type is type(None):
                raise HandlerSignatureError(
                    f"handler {spec.name}: publishes its return value to {options.returns.kind} "
                    f"{options.returns.name!r}, but is annotated to return None"
                )
            check_type = getattr(options.codec or self.codec, "check_type", None)
            if check_type is not None and spec.payload_type is not None:
                try:  # a codec that cannot carry the payload type says so now, not per message
                    check_type(spec.payload_type)
                except ConfigurationError as exc:
                    raise HandlerSignatureError(f"handler {spec.name}: {exc}") from None
            self._subscribers.append(Subscriber(name, kind, group, spec, options))
            return func

        return decorator

    # -- publishing -------------------------------------------------------------------------

    def build_message(
        self,
        name: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Message:
        """The message `publish` would send (synchronous codecs only)."""
        if self._sync_codec is None:
            raise TypeError("build_message needs a synchronous codec; publish() awaits async ones")
        return self._encoded(
            name,
            self._sync_codec.encode(payload),
            key=key,
            headers=_checked_headers(headers),
            message_id=message_id,
            correlation_id=correlation_id,
            timestamp=datetime.now(UTC),
        )

    def _encoded(
        self,
        name: str,
        encoded: Encoded,
        *,
        key: str | None,
        headers: dict[str, str],
        message_id: str | None,
        correlation_id: str | None,
        timestamp: datetime,
        reply_to: str | None = None,
    ) -> Message:
        """The message around ``encoded``; ``headers`` already checked (`_checked_headers`),
        and this message's own. Published while a handler runs, it carries that handler's
        message as its cause and shares its correlation id (DESIGN 9)."""
        handling = HANDLING.get()
        if handling is not None:
            cause = handling[1].raw.message
            if correlation_id is None:
                correlation_id = cause.correlation_id or cause.id
            headers[CAUSATION_ID] = cause.id  # the eventbus- prefix is refused in user headers
        if encoded.dataschema is not None:
            headers[DATASCHEMA] = encoded.dataschema
        return Message(
            id=message_id or new_message_id(),
            topic=name,
            body=encoded.body,
            key=key,
            headers=headers,
            content_type=encoded.content_type,
            type=encoded.type,
            timestamp=timestamp,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> str:
        """Publish an event to every group of ``topic``; returns the message id once the broker
        confirmed it. Messages with the same ``key`` are handled in publish order.

        ``ttl`` (seconds) or ``expires_at`` (an aware datetime): a consumer that gets the
        message later does not handle it, and dead-letters it as ``expired`` (or drops it, by
        its ``on_expired``).
        ``delay`` (seconds) or ``at`` (an aware datetime; a past one means now) schedules it:
        it is delivered no earlier, to the groups bound to the topic when it falls due, and
        a scheduled message keeps no order with the others (docs/flow-control.md). With both,
        ``ttl`` counts from when the message falls due. ``codec``: encodes this payload instead
        of the bus's codec."""
        due = not_before(delay, at)
        return await self._publish_one(
            self._destination(topic, "topic", due),
            payload,
            key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            expires=expiry_header(ttl, expires_at, due),
            codec=codec,
        )

    async def send(
        self,
        queue: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> str:
        """Send a command to ``queue``: exactly one consumer handles it. ``ttl``/``expires_at``,
        ``delay``/``at`` and ``codec`` as for `publish`."""
        due = not_before(delay, at)
        return await self._publish_one(
            self._destination(queue, "queue", due),
            payload,
            key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            expires=expiry_header(ttl, expires_at, due),
            codec=codec,
        )

    def _destination(self, name: str, kind: Kind, due: float | None) -> Destination:
        """Where `publish` / `send` go: the name checked once, and one immutable `Destination`
        kept per name for the publishes that are not scheduled (most of them)."""
        if due is not None:
            return Destination(_check_name(kind, name), kind, not_before=due)
        known = self._destinations[kind]
        to = known.get(name) if type(name) is str else None
        if to is None:
            to = Destination(_check_name(kind, name), kind)
            if type(name) is str and len(known) < _KNOWN_DESTINATIONS:
                known[name] = to
        return to

    async def _publish_one(
        self,
        to: Destination,
        payload: object,
        *,
        key: str | None,
        headers: Mapping[str, str] | None,
        message_id: str | None,
        correlation_id: str | None,
        expires: str | None = None,
        codec: Codec | AsyncCodec | None = None,
        reply_to: str | None = None,
    ) -> str:
        if codec is not None:
            encoded = await _encode_with(codec, payload, to.name)
        elif self._sync_codec is not None:
            encoded = self._sync_codec.encode(payload)
        else:
            assert self._async_codec is not None
            encoded = await self._async_codec.encode(payload, to.name)
        checked = _checked_headers(headers)
        if expires is not None:
            checked[EXPIRES_AT] = expires
        message = self._encoded(
            to.name,
            encoded,
            key=key,
            headers=checked,
            message_id=message_id,
            correlation_id=correlation_id,
            timestamp=datetime.now(UTC),
            reply_to=reply_to,
        )
        await self._send(to, [message])
        return message.id

    async def publish_many(
        self,
        topic: str,
        payloads: Sequence[object],
        *,
        keys: Sequence[str | None] | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> list[str]:
        """The high-throughput path: publish many messages without waiting for each confirm in
        turn. Returns their ids; if some fail, `PublishError.failures` maps their indices to
        the causes (the others were confirmed). ``ttl``/``expires_at`` (one deadline for all),
        ``delay``/``at`` (one due time for all) and ``codec`` as for `publish`."""
        if keys is not None and len(keys) != len(payloads):
            raise ConfigurationError("keys must be as long as payloads")
        _check_name("topic", topic)
        due = not_before(delay, at)
        common = _checked_headers(headers)  # checked once, copied per message
        expires = expiry_header(ttl, expires_at, due)
        if expires is not None:
            common[EXPIRES_AT] = expires
        # One call, one publish time: the wire format then formats it once, not per message.
        now = datetime.now(UTC)
        if codec is not None:
            encoded = [await _encode_with(codec, p, topic) for p in payloads]
        elif self._sync_codec is not None:
            encoded = [self._sync_codec.encode(p) for p in payloads]
        else:
            assert self._async_codec is not None
            encoded = [await self._async_codec.encode(p, topic) for p in payloads]
        messages = [
            self._encoded(
                topic,
                body,
                key=key,
                headers=dict(common),
                message_id=None,
                correlation_id=None,
                timestamp=now,
            )
            for body, key in zip(encoded, keys or itertools.repeat(None), strict=False)
        ]
        await self._send(Destination(topic, "topic", not_before=due), messages)
        return [m.id for m in messages]

    async def _send(self, to: Destination, messages: Sequence[Message]) -> None:
        """``transport.publish``, counted when metrics are on, in a span when tracing is."""
        transport = self._connected()
        if self._metrics is None and self._tracing is None:
            await transport.publish(to, messages)  # the usual path: nothing else to do
            return
        send = transport.publish
        if self._metrics is not None:
            send = functools.partial(self._metrics.publish, transport)
        if self._tracing is not None:
            await self._tracing.publish(send, to, messages)
        else:
            await send(to, messages)

    async def _publish_result(self, to: Destination, value: object, cause: Message) -> None:
        """A handler's return value (`eventbus.dispatch.returns`); it runs inside the handler's
        context, so `_encoded` gives it the cause's correlation id and its causation id."""
        try:
            await self._publish_one(
                to, value, key=cause.key, headers=None, message_id=None, correlation_id=None
            )
        except UnroutableError:
            if not to.reply:
                raise
            # The requester is gone (its reply queue with it): no one could ever read this
            # reply, so retrying the handler would only end in a dead letter.
            log.warning(
                "reply to %s for message %s dropped: nobody listens there any more",
                to.name,
                cause.id,
            )

    # -- request-reply ----------------------------------------------------------------------

    @property
    def request_stats(self) -> RequestStats:
        """Counts of this bus's requests: sent, replied, failed, timed out, late replies."""
        return self._replies.stats

    async def request(
        self,
        name: str,
        payload: object,
        *,
        response: Any = Any,
        timeout: float = 5.0,  # noqa: ASYNC109 (DESIGN 12 names it)
        kind: Kind = "queue",
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        codec: Codec | AsyncCodec | None = None,
    ) -> Any:
        """Send ``payload`` to queue ``name`` (``kind="topic"``: publish it to topic ``name``;
        the first reply wins) and return the reply, decoded as ``response`` (a pydantic model,
        a type; ``Any``: the JSON value, or ``str``/``bytes`` for a text or binary reply). The
        responder's handler returns the reply.

        The request carries a fresh correlation id and this bus's reply-to, and expires
        `REQUEST_EXPIRY_MARGIN` seconds after ``timeout`` (a responder that gets it later
        drops it unhandled). Raises `RequestTimeoutError` (a `TimeoutError`) when no reply
        came within ``timeout`` seconds, publishing included, and `ResponderError` with the
        responder's error type and message when its handler gave up. Works on a bus started
        with `publisher`; the reply inbox starts with the first request, or `open_replies`
        (docs/request-reply.md)."""
        if not 0 < timeout < math.inf:
            raise ConfigurationError(f"request timeout must be > 0 seconds, got {timeout!r}")
        if kind not in ("queue", "topic"):
            raise ConfigurationError(f"request kind must be 'queue' or 'topic', not {kind!r}")
        to = self._destination(name, kind, None)
        self._connected()
        assert self._task_group is not None
        replies = self._replies
        correlation_id = new_message_id()
        waiter: Waiter | None = None
        with anyio.move_on_after(timeout):
            reply_to = await replies.address(self.transport, self._task_group)
            waiter = replies.expect(correlation_id)
            try:
                await self._publish_one(
                    to,
                    payload,
                    key=key,
                    headers=headers,
                    message_id=None,
                    correlation_id=correlation_id,
                    expires=expiry_header(timeout + REQUEST_EXPIRY_MARGIN, None, None),
                    codec=codec,
                    reply_to=reply_to,
                )
                replies.stats.sent += 1
                await waiter.wait()
            finally:
                replies.forget(correlation_id)
        # A reply that came in the same turn as the deadline still counts.
        reply = waiter.reply if waiter is not None else None
        if reply is None:
            if waiter is not None and waiter.stopped:
                raise RuntimeError(f"the bus stopped before a reply from {kind} {name!r} came")
            replies.stats.timed_out += 1
            raise RequestTimeoutError(kind, name, timeout, correlation_id)
        replies.raise_for_error(name, reply)
        if response is Any:
            response = plain_type(reply.content_type)
        decoder = codec or self.codec
        if inspect.iscoroutinefunction(decoder.decode):
            value = await cast(AsyncCodec, decoder).decode(reply, response)
        else:
            value = cast(Codec, decoder).decode(reply, response)
        replies.stats.replied += 1
        return value

    async def open_replies(self) -> None:
        """Start the reply inbox now rather than with the first request, and return once
        requests can be sent. On Kafka the inbox joins the reply topic's group, which takes a
        moment: a web app calls this in its lifespan so that its first request does not wait
        for the join."""
        self._connected()
        assert self._task_group is not None
        await self._replies.address(self.transport, self._task_group)

    def _connected(self) -> Transport:
        if not self._running:
            raise RuntimeError("the bus is not running: publish inside `async with bus:`")
        return self.transport

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        await self._start(consumers=True)
        return self

    def publisher(self) -> AbstractAsyncContextManager[EventBus]:
        """``async with bus.publisher():`` connects the bus for publishing only: its handlers
        and its startup and shutdown hooks do not run, so a web app's lifespan never joins a
        consumer group. Leaving the block closes the connection. On a bus already running (its
        handlers started in this process, or a test's `eventbus.testing.TestBus`), it uses the
        running bus as it is and leaves it running."""
        return _Publisher(self)

    async def _start(self, *, consumers: bool) -> None:
        if self._running:
            raise RuntimeError("this bus is already running")
        await self.transport.connect()
        self._hooks_scope = anyio.CancelScope()
        self._forwarder_scope = None
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._running = True
        self._consuming = consumers
        self._draining = False
        self._replies.open()
        failed: BaseException | None = None
        try:
            self._runners = []
            metrics = self._metrics
            if metrics is not None and self._metrics_service is not None:
                metrics.subscriptions.clear()
                await self._task_group.start(self._metrics_service.run)
            for subscriber in self._subscribers if consumers else ():
                middleware = self.middleware
                if self._tracing is not None:  # outermost: the span covers every middleware
                    middleware = (self._tracing.middleware(subscriber), *middleware)
                runner = SubscriptionRunner(
                    subscriber,
                    self.transport,
                    subscriber.options.codec or self.codec,
                    self._publish_result,
                    middleware,
                    metrics=metrics.subscription(subscriber) if metrics else None,
                    batch_span=(
                        self._tracing.batch_span(subscriber)
                        if self._tracing is not None and subscriber.options.batch is not None
                        else None
                    ),
                )
                await self._task_group.start(runner.run)
                self._runners.append(runner)  # only started runners are drained and awaited
                log.info("subscribed: %s", subscriber.describe())
            if self.outbox_relay is not None:  # after the subscriptions: they see its first rows
                await self._task_group.start(self.outbox_relay.run, self.metrics_registry)
            forward = getattr(self.transport, "forward_scheduled", None)
            if consumers and forward is not None:
                self._forwarder_scope = anyio.CancelScope()
                await self._task_group.start(self._forward_scheduled, forward)
            if self._startup and consumers:
                self._task_group.start_soon(self._run_startup_hooks)
        except BaseException as exc:
            failed = exc
        if failed is not None:
            # Out of the handler, so that raising it does not chain the group to it. A
            # subscription that cannot start (refused, unreachable) is raised as itself, not in
            # the task groups it crossed (`_stop` gives it back): `except AuthorizationError`.
            error = sole_error(failed)
            del failed
            await self._stop(type(error), error, error.__traceback__)
            raise error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stop(exc_type, exc, tb)

    async def _forward_scheduled(
        self, forward: Callable[..., Coroutine[Any, Any, None]], *, task_status: Any
    ) -> None:
        """The transport's forwarder of scheduled messages (delay tiers), until the bus stops."""
        assert self._forwarder_scope is not None
        with self._forwarder_scope:
            await forward(task_status=task_status)

    async def run(self) -> None:
        """The `async with` lifecycle until cancelled (the CLI cancels it on SIGTERM/SIGINT)."""
        async with self:
            await anyio.sleep_forever()

    def abort_drain(self) -> None:
        """Cut a graceful shutdown short (a second signal): unfinished work is released for
        redelivery at once instead of waited for."""
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    async def _run_startup_hooks(self) -> None:
        # The scope exists before this task runs: a stop that comes first still cancels it.
        assert self._hooks_scope is not None

        async def run(hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
            try:
                await hook()
            except Exception as exc:  # name the hook: a bare traceback from a task says little
                name = f"{hook.__module__}.{getattr(hook, '__qualname__', repr(hook))}"
                raise StartupHookError(name, exc) from exc

        with self._hooks_scope:
            async with anyio.create_task_group() as tg:
                for hook in self._startup:
                    tg.start_soon(run, hook)

    async def _run_shutdown_hooks(self) -> None:
        with anyio.move_on_after(self.graceful_timeout) as scope:
            for hook in self._shutdown:
                try:
                    await hook()
                except Exception as exc:
                    log.error(
                        "shutdown hook %s failed: %s: %s",
                        getattr(hook, "__qualname__", hook),
                        type(exc).__name__,
                        exc,
                    )
        if scope.cancelled_caught:
            log.warning("shutdown hooks cut short after graceful_timeout")

    async def _stop(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._draining = True
        # Shielded: a cancelled `run()` (the usual way to stop) must still drain and settle.
        with anyio.CancelScope(shield=True):
            if self._hooks_scope is not None:
                self._hooks_scope.cancel()
            with anyio.move_on_after(self.graceful_timeout) as drain:
                self._drain_scope = drain
                async with anyio.create_task_group() as tg:
                    if self.outbox_relay is not None:  # its batch in hand marked, not redone
                        tg.start_soon(self.outbox_relay.stop, self.graceful_timeout)
                    for runner in self._runners:
                        tg.start_soon(runner.drain)
            if self.outbox_relay is not None:  # cut short with the drain: cancelled now
                await self.outbox_relay.stop(0)
            if drain.cancelled_caught:
                log.warning("graceful timeout reached: unfinished messages will be redelivered")
            for runner in self._runners:
                runner.abort()
            for runner in self._runners:
                await runner.closed.wait()
            if self._forwarder_scope is not None:
                self._forwarder_scope.cancel()  # unacked ones are forwarded by the next bus
            if self._shutdown and self._consuming:
                await self._run_shutdown_hooks()
            self._replies.stop()  # after the hooks and handlers, which may still make requests
            if self._metrics_service is not None:
                self._metrics_service.stop()  # scrapeable while draining, not any longer
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The task group wraps what the `async with` body raised even when nothing else
            # failed; give that exception back as it was, so `except AuthorizationError` works.
            if exc is None or group.exceptions != (exc,):
                raise
        finally:
            self._task_group = None
            self._running = False
            with anyio.CancelScope(shield=True):
                await self.transport.close()
        raise exc  # outside the handler: its context stays the one it was raised in


class _Publisher:
    """`EventBus.publisher`'s context manager."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._started = False

    async def __aenter__(self) -> EventBus:
        if not self._bus._running:
            await self._bus._start(consumers=False)
            self._started = True
        return self._bus

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if not self._started:
            return None
        self._started = False
        return await self._bus._stop(exc_type, exc, tb)


def _returns(publish_to: str | None, send_to: str | None) -> Destination | None:
    if publish_to is not None and send_to is not None:
        raise ConfigurationError("give publish_to (a topic) or send_to (a queue), not both")
    if publish_to is not None:
        return Destination(_check_name("topic", publish_to), "topic")
    if send_to is not None:
        return Destination(_check_name("queue", send_to), "queue")
    return None


def _tracing(tracing: object, transport: Transport, url: str | None) -> Tracing:
    """The bus's `Tracing`; OpenTelemetry is imported here only, when tracing is asked for."""
    from eventbus.tracing import Tracing, messaging_system  # raises ConfigurationError if absent

    if tracing is True:
        provider = None  # the global tracer provider, looked up when each span starts
    elif callable(getattr(tracing, "get_tracer", None)):
        provider = cast("TracerProvider", tracing)
    else:
        raise ConfigurationError(
            f"tracing must be True, False or an OpenTelemetry TracerProvider, not {tracing!r}"
        )
    return Tracing(provider, messaging_system(transport, url))
