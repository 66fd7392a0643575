"""The default codec (DESIGN 2, payloads): what each payload type becomes on the wire and back."""

from typing import Any

import pydantic
import pytest

from eventbus import BrokerUnavailableError, Delivery, EventBus, JsonCodec, Message, RetryPolicy
from eventbus.codecs import DecodeError, Encoded
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int
    note: str = ""


class Bytes(bytes):
    """Subclasses take the isinstance path of the codec, exact bytes and str a shortcut."""


class Text(str):
    __slots__ = ()


def decode(body: bytes, target: Any) -> object:
    return JsonCodec().decode(Message(id="1", topic="t", body=body), target)


@pytest.mark.parametrize(
    ("payload", "body", "content_type", "type_"),
    [
        (Order(id=1, note="ß"), b'{"id":1,"note":"\xc3\x9f"}', "application/json", "Order"),
        (b"\x00\xff", b"\x00\xff", "application/octet-stream", None),
        (bytearray(b"ab"), b"ab", "application/octet-stream", None),
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8", None),
        (Bytes(b"ab"), b"ab", "application/octet-stream", None),
        (Text("ab"), b"ab", "text/plain; charset=utf-8", None),
        ({"a": [1, None]}, b'{"a":[1,null]}', "application/json", None),
        ([1, 2], b"[1,2]", "application/json", None),
        (7, b"7", "application/json", None),
    ],
)
def test_encode(payload: object, body: bytes, content_type: str, type_: str | None) -> None:
    encoded = JsonCodec().encode(payload)
    assert (encoded.body, encoded.content_type, encoded.type) == (body, content_type, type_)


def test_unencodable_payload() -> None:
    with pytest.raises(TypeError, match="cannot encode object as JSON"):
        JsonCodec().encode(object())


def test_decode_follows_the_annotation() -> None:
    assert decode(b'{"id": 2}', Order) == Order(id=2)
    assert decode(b"\xff raw", bytes) == b"\xff raw"
    assert decode("ünï".encode(), str) == "ünï"
    assert decode(b'{"k": 1}', dict) == {"k": 1}
    assert decode(b"[1, 2]", list[int]) == [1, 2]
    assert decode(b"5", int) == 5


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (b'{"id": "x"}', Order),
        (b"{", Order),
        (b"\xff", str),
        (b"[1]", dict),
        (b"nope", dict),
        (b'"a"', int),
    ],
)
def test_decode_errors_are_decode_errors(body: bytes, target: Any) -> None:
    with pytest.raises(DecodeError, match=r"cannot decode body|expected a JSON object"):
        decode(body, target)


class RegistryCodec:
    """An asynchronous codec, as a schema-registry codec is: it sees the destination, and its
    registry can be down."""

    def __init__(self) -> None:
        self.destinations: list[str] = []
        self.outages = 2

    async def encode(self, payload: object, destination: str) -> Encoded:
        self.destinations.append(destination)
        return JsonCodec().encode(payload)

    async def decode(self, message: Message, target: Any) -> object:
        if self.outages:
            self.outages -= 1
            raise BrokerUnavailableError("registry:8081", "connection refused")
        return JsonCodec().decode(message, target)


async def test_an_async_codec_sees_the_destination_and_its_outage_spends_no_attempt(
    url: str, broker: MemoryBroker
) -> None:
    codec = RegistryCodec()
    bus = EventBus(url, codec=codec)
    got: list[tuple[int, int]] = []

    @bus.subscribe("orders", group="g", retry=RetryPolicy(max_attempts=1))
    async def handle(order: Order, delivery: Delivery) -> None:
        got.append((order.id, delivery.attempt))

    async with bus:
        await bus.publish("orders", Order(id=1))
        await bus.send("jobs", Order(id=2))
        await bus.publish_many("orders", [Order(id=3)])
        await wait_for(lambda: len(got) == 2)
    assert codec.destinations == ["orders", "jobs", "orders"]
    assert sorted(got) == [(1, 1), (3, 1)], "the outage spent no attempt"
    assert broker.published("orders.g.dlq") == []
    with pytest.raises(TypeError, match="synchronous codec"):
        bus.build_message("orders", Order(id=4))
