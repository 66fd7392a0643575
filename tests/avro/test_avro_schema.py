"""Avro schemas from pydantic models (`eventbus.avro.schema`), and Avro's schema resolution
between two versions of a model: what lets a consumer with an older or newer model read
what it can (issue: contracts). No registry here; `test_avro_registry.py` has one."""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import fastavro
import pytest
from order_versions import OrderBroken, OrderV1, OrderV2
from pydantic import BaseModel, Field

from eventbus.avro import AvroSchemaError, load_avsc, model_schema


class Colour(enum.Enum):
    RED = "RED"
    BLUE = "BLUE"


class Line(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    """An order."""

    id: str
    amount: float
    paid: bool
    blob: bytes
    at: dt.datetime
    day: dt.date
    ref: uuid.UUID
    colour: Colour = Colour.RED
    lines: list[Line] = []
    extra: dict[str, int] = {}
    note: str | None = None
    count: Annotated[int, Field(description="how many")] = 3
    again: Line | None = None


def test_a_model_becomes_a_record_with_the_usual_avro_types() -> None:
    schema = model_schema(Order, "shop")
    assert schema["name"] == "Order" and schema["namespace"] == "shop"
    assert schema["doc"] == "An order."
    fields = {field["name"]: field for field in schema["fields"]}
    assert fields["id"]["type"] == "string"
    assert fields["amount"]["type"] == "double"
    assert fields["paid"]["type"] == "boolean"
    assert fields["blob"]["type"] == "bytes"
    assert fields["at"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["day"]["type"] == {"type": "int", "logicalType": "date"}
    assert fields["ref"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["colour"] == {
        "name": "colour",
        "type": {"type": "enum", "name": "Colour", "namespace": "shop", "symbols": ["RED", "BLUE"]},
        "default": "RED",
    }
    assert fields["lines"]["type"]["type"] == "array"
    assert fields["lines"]["type"]["items"]["name"] == "Line"
    assert fields["lines"]["default"] == []
    assert fields["extra"]["type"] == {"type": "map", "values": "long"}
    assert fields["note"] == {"name": "note", "type": ["null", "string"], "default": None}
    assert fields["count"]["doc"] == "how many" and fields["count"]["default"] == 3
    # Line is defined once (inside `lines`), then referred to by its full name.
    assert fields["again"]["type"] == ["null", "shop.Line"]
    fastavro.parse_schema(schema)  # a valid schema for an Avro library


def test_the_namespace_defaults_to_the_models_module() -> None:
    assert model_schema(Line)["namespace"] == __name__


def test_a_union_with_a_non_null_default_puts_that_branch_first() -> None:
    class Tagged(BaseModel):
        tag: str | None = "none"

    (field,) = model_schema(Tagged, "t")["fields"]
    assert field == {"name": "tag", "type": ["string", "null"], "default": "none"}
    fastavro.parse_schema(model_schema(Tagged, "t"))


@pytest.mark.parametrize(
    ("annotation", "why"),
    [(dict[int, str], "string keys"), (tuple[int, str], "tuple"), (complex, "no Avro form")],
)
def test_a_field_avro_cannot_express_is_refused_with_its_name(annotation: Any, why: str) -> None:
    class Odd(BaseModel):
        field: annotation  # type: ignore[valid-type]

    with pytest.raises(AvroSchemaError, match=rf"Odd\.field: .*{why}"):
        model_schema(Odd)


def test_an_avsc_file_is_read_and_a_broken_one_named(tmp_path: Path) -> None:
    good = tmp_path / "order.avsc"
    good.write_text(json.dumps({"type": "record", "name": "Order", "fields": []}))
    assert load_avsc(good)["name"] == "Order"
    bad = tmp_path / "bad.avsc"
    bad.write_text("{not json")
    with pytest.raises(AvroSchemaError, match=r"bad\.avsc"):
        load_avsc(bad)


# -- resolution between versions ----------------------------------------------------------------


def _roundtrip(record: BaseModel, reader: type[BaseModel]) -> dict[str, Any]:
    writer = fastavro.parse_schema(model_schema(type(record), "shop", "Order"))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, writer, record.model_dump())
    out.seek(0)
    read = fastavro.parse_schema(model_schema(reader, "shop", "Order"))
    result: dict[str, Any] = fastavro.schemaless_reader(out, writer, read)
    return result


def test_a_field_added_with_a_default_resolves_both_ways() -> None:
    # A newer reader fills in the default for what an older writer did not write...
    assert _roundtrip(OrderV1(id="1", amount=2.0), OrderV2) == {
        "id": "1",
        "amount": 2.0,
        "currency": "EUR",
    }
    # ... and an older reader skips what a newer writer wrote.
    assert _roundtrip(OrderV2(id="1", amount=2.0, currency="USD"), OrderV1) == {
        "id": "1",
        "amount": 2.0,
    }


def test_a_changed_type_does_not_resolve() -> None:
    with pytest.raises(Exception, match=r"amount|Schema"):
        _roundtrip(OrderV1(id="1", amount=2.0), OrderBroken)


class Odd(BaseModel):
    value: complex


def test_a_handler_whose_model_has_no_avro_form_fails_at_decoration() -> None:
    from eventbus import EventBus, HandlerSignatureError
    from eventbus.avro import AvroCodec, SchemaRegistry

    codec = AvroCodec(SchemaRegistry("http://registry.invalid:8081"))
    bus = EventBus("memory://", codec=codec)
    with pytest.raises(HandlerSignatureError, match=r"handler .*odd.*Odd\.value"):

        @bus.subscribe("odd", group="g")
        async def odd(payload: Odd) -> None: ...

    json_bus = EventBus("memory://")  # the same model is fine for JSON, and per subscription
    with pytest.raises(HandlerSignatureError, match=r"Odd\.value"):

        @json_bus.subscribe("odd", group="g", codec=codec)
        async def odd_too(payload: Odd) -> None: ...

    @json_bus.subscribe("odd", group="h")
    async def fine(payload: Odd) -> None: ...


def test_a_default_factory_gives_a_default_only_when_it_is_always_the_same() -> None:
    class Stamped(BaseModel):
        tags: list[str] = Field(default_factory=list)
        at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
        ref: uuid.UUID = Field(default_factory=uuid.uuid4)

    fields = {f["name"]: f for f in model_schema(Stamped, "t")["fields"]}
    assert fields["tags"]["default"] == []
    assert "default" not in fields["at"] and "default" not in fields["ref"]
    assert model_schema(Stamped, "t") == model_schema(Stamped, "t")  # the same every time
