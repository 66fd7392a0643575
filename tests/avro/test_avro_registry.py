"""`AvroCodec` and `SchemaRegistry` against a real Confluent-compatible registry (Apicurio, from
`scripts/brokers`), on the in-memory transport: the wire format, subjects, auto-registration,
schema evolution both ways, a breaking change dead-lettered as ``undecodable``, and a registry
outage (consuming waits, publishing fails with the address)."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from order_versions import OrderBroken, OrderV1, OrderV2

from eventbus import Delivery, EventBus, Message, RetryPolicy
from eventbus import headers as h
from eventbus.avro import AVRO, AvroCodec, SchemaRegistry, SchemaRegistryError, model_schema
from eventbus.codecs.base import DecodeError
from eventbus.errors import BrokerUnavailableError, ConfigurationError
from eventbus.testing.conformance import wait_for


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[SchemaRegistry]:
    async with SchemaRegistry(registry_url) as client:
        yield client


@pytest.fixture(params=["memory", "kafka", "amqp"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """The same test on every transport: the codec is transport-agnostic, the wire is not."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{request.param}_url"))


def _topic() -> str:
    return f"avro-{uuid.uuid4().hex[:10]}"


async def test_a_model_goes_out_in_the_confluent_wire_format_and_comes_back(
    registry: SchemaRegistry,
) -> None:
    codec = AvroCodec(registry, auto_register=True, namespace="shop")
    topic = _topic()
    encoded = await codec.encode(OrderV1(id="o1", amount=2.5), topic)
    assert encoded.content_type == AVRO and encoded.type == "OrderV1"
    magic, schema_id = struct.unpack(">bI", encoded.body[:5])
    assert magic == 0
    # Registered under the topic's value subject, with the model's schema, under that id.
    latest = await registry.latest(f"{topic}-value")
    assert latest is not None and latest[0] == schema_id
    assert json.loads(latest[1])["name"] == "OrderV1"
    assert encoded.dataschema == f"{registry.url}/schemas/ids/{schema_id}"

    bus = EventBus("memory://", codec=codec)
    got: list[OrderV1] = []

    @bus.subscribe(topic, group="g")
    async def handle(order: OrderV1) -> None:
        got.append(order)

    async with bus:
        await bus.publish(topic, OrderV1(id="o2", amount=1.0))
        await wait_for(lambda: got)
    assert got == [OrderV1(id="o2", amount=1.0)]


async def test_without_auto_register_an_unregistered_schema_fails_the_publish_clearly(
    registry: SchemaRegistry,
) -> None:
    codec = AvroCodec(registry, namespace="shop")
    topic = _topic()
    with pytest.raises(SchemaRegistryError, match=rf"not registered under subject '{topic}-value'"):
        await codec.encode(OrderV1(id="o1", amount=2.5), topic)
    # Registered (as CI would), the same publish finds it.
    schema = json.dumps(codec.schema_of(OrderV1))
    schema_id = await registry.id_of(f"{topic}-value", schema, register=True)
    encoded = await codec.encode(OrderV1(id="o1", amount=2.5), topic)
    assert struct.unpack(">bI", encoded.body[:5])[1] == schema_id


async def test_a_registry_that_enforces_compatibility_refuses_a_breaking_auto_registration(
    registry: SchemaRegistry,
) -> None:
    topic = _topic()
    # Three versions of one record: the later ones keep its name (`schemas=` can name them).
    named = {m: model_schema(m, "shop", "Order") for m in (OrderV1, OrderV2, OrderBroken)}
    codec = AvroCodec(registry, auto_register=True, schemas=named)
    await codec.encode(OrderV1(id="o1", amount=1.0), topic)
    # Apicurio's default level is NONE (Confluent's: BACKWARD): set it, as production would.
    await registry.set_compatibility("BACKWARD", f"{topic}-value")
    await codec.encode(OrderV2(id="o2", amount=1.0), topic)  # a default: compatible
    with pytest.raises(SchemaRegistryError, match="STRING not compatible") as caught:
        await codec.encode(OrderBroken(id="o3", amount="1"), topic)
    assert caught.value.status == 409


async def test_two_services_registering_a_new_subject_at_once_both_succeed(
    registry_url: str,
) -> None:
    """Two services starting together register v1 and v2 of a new subject at the same moment
    (the registry answers the loser "artifact already exists", 409): both get an id, and both
    versions are the subject's. Ten subjects, each a race."""
    v1, v2 = (json.dumps(model_schema(m, "shop", "Order")) for m in (OrderV1, OrderV2))
    async with SchemaRegistry(registry_url) as one, SchemaRegistry(registry_url) as two:
        for _ in range(10):
            subject = f"{_topic()}-value"
            ids = await asyncio.gather(
                one.id_of(subject, v1, register=True), two.id_of(subject, v2, register=True)
            )
            assert len(set(ids)) == 2
            assert len(await one.versions(subject)) == 2


async def test_subject_strategies(registry: SchemaRegistry) -> None:
    topic = _topic()
    space = f"ns{uuid.uuid4().hex[:8]}"
    record = AvroCodec(registry, subject="record", auto_register=True, namespace=space)
    await record.encode(OrderV1(id="1", amount=1.0), topic)
    both = AvroCodec(registry, subject="topic_record", auto_register=True, namespace="shop")
    await both.encode(OrderV1(id="1", amount=1.0), topic)
    subjects = await registry.subjects()
    assert f"{space}.OrderV1" in subjects
    assert f"{topic}-shop.OrderV1" in subjects


async def test_a_field_added_with_a_default_is_read_by_older_and_newer_consumers(
    registry: SchemaRegistry,
) -> None:
    topic = _topic()
    codec = AvroCodec(registry, auto_register=True, namespace="shop")
    old = await codec.encode(OrderV1(id="old", amount=1.0), topic)
    new = await codec.encode(OrderV2(id="new", amount=2.0, currency="USD"), topic)
    assert old.body[1:5] != new.body[1:5]  # two schema versions, two ids

    bus = EventBus("memory://", codec=AvroCodec(registry, namespace="shop"))
    as_v1: list[OrderV1] = []
    as_v2: list[OrderV2] = []

    @bus.subscribe(topic, group="v1")
    async def v1(order: OrderV1) -> None:
        as_v1.append(order)

    @bus.subscribe(topic, group="v2")
    async def v2(order: OrderV2) -> None:
        as_v2.append(order)

    async with bus:
        # Bodies already in the wire format pass through the fallback codec untouched.
        await bus.publish(topic, old.body)
        await bus.publish(topic, new.body)
        await wait_for(lambda: len(as_v1) == 2 and len(as_v2) == 2)
    assert as_v1 == [OrderV1(id="old", amount=1.0), OrderV1(id="new", amount=2.0)]
    assert as_v2 == [
        OrderV2(id="old", amount=1.0, currency="EUR"),  # the reader's default
        OrderV2(id="new", amount=2.0, currency="USD"),
    ]


async def test_a_breaking_change_is_dead_lettered_undecodable_and_the_rest_flows(
    registry: SchemaRegistry, bus_url: str
) -> None:
    topic = _topic()
    writer = AvroCodec(registry, auto_register=True, namespace="shop")
    bad = await writer.encode(OrderV1(id="bad", amount=1.0), topic)
    bus = EventBus(bus_url, codec=AvroCodec(registry, namespace="shop"))
    got: list[OrderBroken] = []
    dead: list[Message] = []

    @bus.subscribe(
        topic,
        group="g",
        dead_letter=f"{topic}.dead",
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
    )
    async def handle(order: OrderBroken) -> None:
        got.append(order)

    @bus.consume(f"{topic}.dead")
    async def dlq(message: Message) -> None:
        dead.append(message)

    async with bus:
        await bus.publish(topic, bad.body)
        await bus.publish(topic, b"\x00\x00\x00\x00")  # truncated: no schema id
        await wait_for(lambda: len(dead) == 2)
    assert got == []
    assert [m.headers[h.DLQ_REASON] for m in dead] == ["undecodable", "undecodable"]
    assert [m.headers[h.ATTEMPTS] for m in dead] == ["1", "1"]  # poison: no retries
    assert "OrderBroken" in dead[0].headers[h.ERROR_MESSAGE]


async def test_while_the_registry_is_unreachable_consuming_waits_and_publishing_fails(
    registry: SchemaRegistry, registry_url: str, bus_url: str
) -> None:
    topic = _topic()
    written = await AvroCodec(registry, auto_register=True, namespace="shop").encode(
        OrderV1(id="o1", amount=1.0), topic
    )
    late = _LateProxy(registry_url)
    down = SchemaRegistry(late.url)
    bus = EventBus(bus_url, codec=AvroCodec(down, namespace="shop"))
    got: list[tuple[OrderV1, int]] = []

    @bus.subscribe(topic, group="g", retry=RetryPolicy(max_attempts=1))
    async def handle(order: OrderV1, delivery: Delivery) -> None:
        got.append((order, delivery.attempt))

    async with bus:
        with pytest.raises(BrokerUnavailableError, match=rf"{late.url} unreachable"):
            await bus.publish(topic, OrderV1(id="never", amount=0.0))
        await bus.publish(topic, written.body)
        await asyncio.sleep(1.5)  # decoding waits meanwhile: nothing handled, nothing dead
        stats = bus.subscribers[0].stats
        assert got == [] and stats.dead_lettered == 0 and stats.failed_attempts == 0
        async with late:
            await wait_for(lambda: got)
        assert stats.dead_lettered == 0
    assert got == [(OrderV1(id="o1", amount=1.0), 1)]  # no attempt spent while it waited
    await down.aclose()


def test_credentials_in_the_url_never_show() -> None:
    client = SchemaRegistry("https://alice:s3cret@registry.example:8081/apis/ccompat/v7")
    assert client.url == "https://registry.example:8081/apis/ccompat/v7"
    assert "s3cret" not in repr(vars(client))


async def test_an_unreachable_registry_error_names_the_address_not_the_password() -> None:
    client = SchemaRegistry("http://bob:hunter2@127.0.0.1:1/ccompat")
    with pytest.raises(BrokerUnavailableError) as caught:
        await client.schema(1)
    assert "127.0.0.1:1" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    await client.aclose()


class _LateProxy:
    """A TCP port that refuses connections until entered, then forwards to the registry."""

    def __init__(self, upstream_url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        import socket

        with socket.socket() as probe:  # a free port, nothing listening on it yet
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{parts.path}"
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _LateProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_codec_per_subscription_and_per_publish(registry: SchemaRegistry) -> None:
    topic = _topic()
    avro = AvroCodec(registry, auto_register=True, namespace="shop")
    bus = EventBus("memory://")  # JSON by default
    as_avro: list[OrderV1] = []
    as_json: list[Message] = []

    @bus.subscribe(topic, group="avro", codec=avro)
    async def avro_reader(order: OrderV1) -> None:
        as_avro.append(order)

    @bus.subscribe(topic, group="raw")
    async def raw_reader(message: Message) -> None:
        as_json.append(message)

    async with bus:
        await bus.publish(topic, OrderV1(id="a", amount=1.0), codec=avro)
        await bus.publish(topic, OrderV1(id="j", amount=2.0))  # the bus's JSON codec
        await bus.publish_many(topic, [OrderV1(id="m", amount=3.0)], codec=avro)
        await wait_for(lambda: len(as_avro) == 3 and len(as_json) == 3)
    # The Avro subscription reads both: Avro by its magic byte, JSON through its fallback.
    assert sorted(o.id for o in as_avro) == ["a", "j", "m"]
    assert [m.content_type for m in as_json] == [AVRO, "application/json", AVRO]
    assert as_json[0].body[0] == 0 and as_json[1].body.startswith(b"{")


def test_registry_urls_parse_without_echoing_a_password() -> None:
    assert SchemaRegistry("http://[::1]:8081/apis").url == "http://[::1]:8081/apis"
    with pytest.raises(ConfigurationError) as caught:
        SchemaRegistry("https://svc:abc/def@registry:8081")  # an unquoted '/' in the password
    assert "abc" not in str(caught.value) and "def" not in str(caught.value)


async def test_an_answer_that_is_not_the_registry_api_waits_and_an_unknown_id_is_poison(
    registry: SchemaRegistry, registry_url: str
) -> None:
    topic = _topic()
    body = (
        await AvroCodec(registry, auto_register=True).encode(OrderV1(id="o", amount=1), topic)
    ).body
    message = _message(topic, body)
    # A wrong base path: the server answers, but not as a registry. Nothing says the record is
    # bad, so decoding waits (BrokerUnavailableError) instead of dead-lettering every message.
    wrong = SchemaRegistry(registry_url.rsplit("/apis", 1)[0] + "/not-the-api")
    with pytest.raises(BrokerUnavailableError, match="cannot read schema id"):
        await AvroCodec(wrong).decode(message, OrderV1)
    await wrong.aclose()
    # An id this registry never gave out: the record is poison (written against another one).
    unknown = body[:1] + struct.pack(">I", 2**31 - 7) + body[5:]
    with pytest.raises(DecodeError, match="is not in the registry"):
        await AvroCodec(registry).decode(_message(topic, unknown), OrderV1)


def _message(topic: str, body: bytes) -> Message:
    return Message(
        id="m",
        topic=topic,
        body=body,
        key=None,
        headers={},
        content_type=None,
        type=None,
        timestamp=datetime.now(UTC),
        correlation_id=None,
    )
