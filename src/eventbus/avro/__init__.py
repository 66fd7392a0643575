"""Avro payloads with a Confluent-compatible schema registry (the ``eventbus[avro]`` extra).

    from eventbus.avro import AvroCodec, SchemaRegistry

    bus = EventBus(url, codec=AvroCodec(SchemaRegistry("http://registry:8081")))

See `codec.py` for the wire format and what happens to records written with another schema,
`schema.py` for how a pydantic model becomes an Avro schema. docs/contracts.md is the guide.
"""

from __future__ import annotations

try:
    import fastavro  # noqa: F401
    import httpx  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("eventbus.avro needs the avro extra: pip install 'eventbus[avro]'") from exc

from eventbus.avro.codec import AVRO, AvroCodec, SubjectStrategy
from eventbus.avro.registry import SchemaRegistry, SchemaRegistryError
from eventbus.avro.schema import AvroSchemaError, load_avsc, model_schema

__all__ = [
    "AVRO",
    "AvroCodec",
    "AvroSchemaError",
    "SchemaRegistry",
    "SchemaRegistryError",
    "SubjectStrategy",
    "load_avsc",
    "model_schema",
]
