"""OpenTelemetry tracing (DESIGN 9): a PRODUCER span per publish, a CONSUMER span per attempt
(per call of a batch handler, linked to each message's publisher).

Imported only when a bus is built with ``tracing=`` on, so nothing imports OpenTelemetry (the
``eventbus[otel]`` extra) otherwise, and a bus without tracing does no work for it beyond one
``is None`` check per publish.

The trace travels in the message: a publish injects its span's context into the headers
through the global propagator (W3C ``traceparent``/``tracestate`` by default), as bare headers
that every transport carries untouched. Handling extracts it, reading the CloudEvents-prefixed
forms too (``ce_traceparent`` on Kafka, ``cloudEvents_traceparent`` on AMQP), so a message
from any producer that propagates W3C trace context joins its trace.

Every attempt's span is a child of the *publisher's* context, never of an earlier attempt's:
a retry through the broker and a dead letter carry the original headers, and a DLQ replay
keeps them, so retried, dead-lettered and replayed messages stay in the trace they started in,
whichever process handles them; ``eventbus.attempt`` tells the attempts apart. A broker-side
redelivery (a requeue, a crash) cannot change the headers anyway; one rule for all keeps the
trace shape the same whichever way a message came back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from eventbus.dispatch.batches import BatchSpan
from eventbus.dispatch.invoke import Handler, Middleware
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import ConfigurationError
from eventbus.message import Delivery, Message
from eventbus.transports.base import Destination, Transport

try:
    from opentelemetry import context as context_api
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised by hiding the package in a test
    raise ConfigurationError(
        "tracing needs OpenTelemetry: install the extra with `pip install 'eventbus[otel]'` "
        "(the opentelemetry-api package)"
    ) from exc

__all__ = ["Tracing", "messaging_system"]

TRACE_HEADERS = ("traceparent", "tracestate")
"""Written bare on publish; a forwarded message's old values are dropped first."""

_PREFIXES = ("", "ce_", "cloudEvents_", "cloudEvents:")
"""Header name forms read, in order: bare (what eventbus writes), then the CloudEvents
distributed-tracing extension as the Kafka and AMQP bindings name it."""

_SYSTEMS = {"kafka": "kafka", "amqp": "rabbitmq", "amqps": "rabbitmq", "memory": "memory"}


def messaging_system(transport: Transport, url: str | None) -> str:
    """``messaging.system``: the transport's ``messaging_system`` attribute when it has one,
    else from the URL scheme the bus resolved it from, else the transport class's name."""
    system = getattr(transport, "messaging_system", None)
    if isinstance(system, str) and system:
        return system
    if url is not None:
        scheme = urlsplit(url).scheme
        return _SYSTEMS.get(scheme, scheme)
    return type(transport).__name__.lower().removesuffix("transport") or "unknown"


class _HeaderGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        for prefix in _PREFIXES:
            value = carrier.get(prefix + key)
            if value is not None:
                return [value]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_getter = _HeaderGetter()


class Tracing:
    """The tracer of one bus and what it adds: spans around publishes, and the consumer
    middleware `EventBus` puts outermost on every subscription."""

    def __init__(self, provider: TracerProvider | None, system: str) -> None:
        self.system = system
        self._tracer = trace.get_tracer("eventbus", tracer_provider=provider)

    async def publish(
        self,
        send: Callable[[Destination, Sequence[Message]], Awaitable[None]],
        to: Destination,
        messages: Sequence[Message],
    ) -> list[Message]:
        """Publish ``messages`` within a PRODUCER span, its context injected into each (one
        span for a batch: `EventBus.publish_many` is one call). Returns what was sent."""
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.destination.name": to.name,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "eventbus.destination.kind": to.kind,
        }
        if len(messages) == 1:
            message = messages[0]
            attributes["messaging.message.id"] = message.id
            if message.key is not None and self.system == "kafka":
                attributes["messaging.kafka.message.key"] = message.key
        else:
            attributes["messaging.batch.message_count"] = len(messages)
        with self._tracer.start_as_current_span(
            f"publish {to.name}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            sent = [_with_context(m, carrier) for m in messages] if carrier else list(messages)
            await send(to, sent)
        return sent

    def _process_attributes(self, subscriber: Subscriber) -> dict[str, Any]:
        """What every CONSUMER span of ``subscriber`` carries."""
        common: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.destination.name": subscriber.name,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "eventbus.destination.kind": subscriber.kind,
        }
        if subscriber.group is not None:
            common["messaging.consumer.group.name"] = subscriber.group
        return common

    def middleware(self, subscriber: Subscriber) -> Middleware:
        """The CONSUMER span around each attempt, parented to the publisher's context. Being
        the outermost middleware, the span is current while the user's middleware and the
        handler run: what they publish continues the trace."""
        tracer = self._tracer
        name = f"process {subscriber.name}"
        common = self._process_attributes(subscriber)
        kafka = self.system == "kafka"

        def wrap(handler: Handler) -> Handler:
            async def traced(d: Delivery) -> None:
                message = d.message
                attributes = dict(common)
                attributes["messaging.message.id"] = message.id
                attributes["eventbus.attempt"] = d.attempt
                if kafka and message.key is not None:
                    attributes["messaging.kafka.message.key"] = message.key
                state = d._settler  # the runtime's own object: it knows the native facts
                if isinstance(state, DeliveryState):
                    _native(attributes, state.raw.native, kafka)
                parent = propagate.extract(message.headers, getter=_getter)
                with tracer.start_as_current_span(
                    name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
                ):
                    await handler(d)

            return traced

        return wrap

    def batch_span(self, subscriber: Subscriber) -> BatchSpan:
        """The CONSUMER span around each call of a batch handler (``batch=``): one span for
        the batch, linked to every message's publisher context (a batch has many parents, so
        it starts a trace of its own, as the messaging conventions do for batch processing).
        What the handler publishes continues the batch's trace."""
        tracer = self._tracer
        name = f"process {subscriber.name}"
        common = self._process_attributes(subscriber)

        def span(messages: Sequence[Message], attempt: int) -> AbstractContextManager[object]:
            links = []
            for message in messages:
                context = propagate.extract(message.headers, getter=_getter)
                publisher = trace.get_current_span(context).get_span_context()
                if publisher.is_valid:
                    links.append(trace.Link(publisher, {"messaging.message.id": message.id}))
            attributes = dict(common)
            attributes["messaging.batch.message_count"] = len(messages)
            attributes["eventbus.attempt"] = attempt
            return tracer.start_as_current_span(
                name,
                context=context_api.Context(),  # a root: not the caller's context
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
            )

        return span


def _with_context(message: Message, carrier: Mapping[str, str]) -> Message:
    headers: MutableMapping[str, str] = {
        k: v for k, v in message.headers.items() if k not in TRACE_HEADERS
    }
    headers.update(carrier)
    return message.replace_headers(headers)


def _native(attributes: dict[str, Any], native: Mapping[str, str], kafka: bool) -> None:
    partition = native.get("partition")
    if partition is not None:
        attributes["messaging.destination.partition.id"] = partition
    offset = native.get("offset")
    if kafka and offset is not None and offset.isdigit():
        attributes["messaging.kafka.offset"] = int(offset)
