"""``eventbus asyncapi``: the document of an app validates against the official AsyncAPI 3.0
JSON Schema (``asyncapi-3.0.0.schema.json``, from the ``@asyncapi/specs`` npm package 6.11.1,
Apache-2.0), and says what the app's registrations say: channels for topics, queues and
dead-letter queues, receive and send operations, messages with their JSON Schema or Avro schema,
Kafka and AMQP bindings. Building a document connects to nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import other_orders
import pytest
import yaml
from pydantic import BaseModel

from eventbus import EventBus
from eventbus.asyncapi import document
from eventbus.avro import AvroCodec, SchemaRegistry
from eventbus.cli import main

SPEC = json.loads((Path(__file__).parent / "asyncapi-3.0.0.schema.json").read_text())


class Address(BaseModel):
    street: str


class Order(BaseModel):
    id: str
    amount: float
    ship_to: Address


class Invoice(BaseModel):
    order_id: str


def _valid(doc: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft7Validator(SPEC).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def _kafka_app() -> EventBus:
    bus = EventBus("kafka://alice:s3cret@broker.example:9092?security_protocol=SASL_SSL")

    @bus.subscribe("orders", group="billing", publish_to="invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=order.id)

    @bus.consume("emails", dead_letter=None)
    async def email(body: bytes) -> None: ...

    return bus


def test_a_kafka_app_validates_and_lists_channels_operations_and_messages() -> None:
    doc = document(_kafka_app(), title="shop", version="2.1.0")
    _valid(doc)
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "shop"
    assert doc["servers"] == {"broker": {"host": "broker.example:9092", "protocol": "kafka"}}
    assert "s3cret" not in json.dumps(doc)
    assert set(doc["channels"]) == {
        "topic.orders",
        "queue.orders.billing.dlq",
        "topic.invoices",
        "queue.emails",
    }
    orders = doc["channels"]["topic.orders"]
    assert orders["address"] == "orders"
    assert orders["bindings"]["kafka"] == {
        "topic": "orders",
        "partitions": 6,  # what eventbus creates topics with (?partitions=)
        "replicas": 1,
        "bindingVersion": "0.5.0",
    }
    assert orders["messages"] == {"Order": {"$ref": "#/components/messages/Order"}}
    ops = doc["operations"]
    assert {name: op["action"] for name, op in ops.items()} == {
        "bill.receive": "receive",
        "bill.dead-letter": "send",
        "bill.send": "send",
        "email.receive": "receive",
    }
    assert ops["bill.receive"]["bindings"]["kafka"]["groupId"]["enum"] == ["billing"]
    assert ops["email.receive"]["bindings"]["kafka"]["groupId"]["enum"] == ["eventbus.queue.emails"]
    assert ops["bill.send"]["channel"] == {"$ref": "#/channels/topic.invoices"}
    messages = doc["components"]["messages"]
    assert messages["Order"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert messages["Bytes"]["contentType"] == "application/octet-stream"
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"Order", "Address", "Invoice"}  # nested models hoisted
    assert schemas["Order"]["properties"]["ship_to"] == {"$ref": "#/components/schemas/Address"}


def test_an_avro_app_on_rabbitmq_carries_avro_schemas_and_amqp_bindings() -> None:
    codec = AvroCodec(SchemaRegistry("http://registry.invalid:8081"), namespace="shop")
    bus = EventBus("amqp://guest:guest@rabbit.example:5672/prod", codec=codec)

    @bus.subscribe("orders", group="billing")
    async def bill(order: Order) -> None: ...

    @bus.consume("jobs")
    async def job(order: Order) -> None: ...

    doc = document(bus)
    _valid(doc)
    assert doc["servers"]["broker"] == {
        "host": "rabbit.example:5672",
        "protocol": "amqp",
        "pathname": "/prod",
    }
    message = doc["components"]["messages"]["OrderAvro"]
    assert message["contentType"] == "application/avro"
    assert message["payload"]["schemaFormat"].startswith("application/vnd.apache.avro")
    assert message["payload"]["schema"]["name"] == "Order"
    exchange = doc["channels"]["topic.orders"]["bindings"]["amqp"]
    assert exchange["is"] == "routingKey"
    assert exchange["exchange"] == {
        "name": "orders",
        "type": "fanout",
        "durable": True,
        "autoDelete": False,
        "vhost": "prod",
    }
    queue = doc["channels"]["queue.jobs"]["bindings"]["amqp"]
    assert queue["is"] == "queue" and queue["queue"]["name"] == "jobs"


def test_the_command_writes_yaml_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "asyncapi_app.py").write_text(
        "from pydantic import BaseModel\n"
        "from eventbus import EventBus\n"
        "class Ping(BaseModel):\n    n: int\n"
        "bus = EventBus('kafka://127.0.0.1:9092')\n"
        "@bus.subscribe('pings', group='g')\n"
        "async def ping(p: Ping) -> None: ...\n"
    )
    assert main(["asyncapi", "asyncapi_app:bus"]) == 0
    from_stdout = yaml.safe_load(capsys.readouterr().out)
    _valid(from_stdout)
    assert main(["asyncapi", "asyncapi_app:bus", "-o", "doc.json", "--title", "pings"]) == 0
    written = json.loads((tmp_path / "doc.json").read_text())
    _valid(written)
    assert written["info"]["title"] == "pings"
    assert written["channels"] == from_stdout["channels"]


def test_the_validation_would_catch_a_broken_document() -> None:
    doc = document(_kafka_app())
    doc["operations"]["bill.receive"]["action"] = "publish"  # AsyncAPI 2's word, not 3's
    with pytest.raises(AssertionError, match="operations"):
        _valid(doc)


class Refund(BaseModel):
    order_id: str


def test_unions_and_models_of_one_name_keep_every_reference_resolvable() -> None:
    bus = EventBus("kafka://127.0.0.1:9092")

    @bus.subscribe("orders", group="a")
    async def first(order: Order) -> None: ...

    @bus.subscribe("legacy", group="b")
    async def second(order: other_orders.Order) -> None: ...

    @bus.subscribe("money", group="c")
    async def third(event: Invoice | Refund) -> None: ...

    doc = document(bus)
    _valid(doc)
    messages = doc["components"]["messages"]
    assert {"Order", "Order2"} <= set(messages)  # two models named Order, two messages
    assert messages["Order"]["payload"] != messages["Order2"]["payload"]
    schemas = doc["components"]["schemas"]
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        section, _, name = ref.removeprefix("#/").partition("/")
        if section == "components":
            kind, _, name = name.partition("/")
            assert name in doc["components"][kind], ref  # nothing dangles
    assert {"Invoice", "Refund"} <= set(schemas)


def test_a_return_value_is_documented_with_the_codec_that_publishes_it() -> None:
    avro = AvroCodec(SchemaRegistry("http://registry.invalid:8081"), namespace="shop")
    bus = EventBus("kafka://127.0.0.1:9092")  # JSON for publishing

    @bus.subscribe("orders", group="billing", codec=avro, publish_to="invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=order.id)

    doc = document(bus)
    _valid(doc)
    messages = doc["components"]["messages"]
    assert messages["OrderAvro"]["contentType"] == "application/avro"  # what it reads
    assert messages["Invoice"]["contentType"] == "application/json"  # what it publishes
