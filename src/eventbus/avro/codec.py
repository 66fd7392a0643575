"""`AvroCodec`: Avro bodies in the Confluent wire format, with their schemas in a registry.

A body is the magic byte 0, the writer schema's registry id (4 bytes, big-endian), then the
Avro binary encoding: what the Confluent serializers write and read, so records cross between
eventbus and any Confluent client in either direction.

Publishing a pydantic model: its schema (`schema.model_schema`, or the ``.avsc`` given for it in
``schemas=``) is looked up under the destination's subject -- or registered, with
``auto_register=True`` (convenient in development; in production register schemas from CI,
where compatibility is checked). Other payloads (``bytes``, ``str``, dicts) go through the
``fallback`` codec (JSON by default), as do bodies that are not in the wire format when
consuming: Avro is recognised by its magic byte, with or without a content type.

Each record carries the CloudEvents ``dataschema`` of its schema: the registry's
``/schemas/ids/<id>`` URL, which answers with the schema.

Consuming: the writer schema comes from the registry by id (cached); the reader schema is the
handler's model, so Avro's schema resolution applies: a field the reader does not know is
skipped, a field the writer did not write takes the reader's default. What cannot be resolved
(a field removed without a default, a type changed) is a `DecodeError` naming the schemas:
the message is dead-lettered as ``undecodable``. While the registry is unreachable, decoding
raises `BrokerUnavailableError`: the subscription waits and tries again, spending no attempt.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import fastavro
import pydantic

from eventbus.avro.registry import SCHEMA_NOT_FOUND, SchemaRegistry, SchemaRegistryError
from eventbus.avro.schema import Schema, load_avsc, model_schema
from eventbus.codecs.base import Codec, DecodeError, Encoded
from eventbus.codecs.json import JsonCodec, type_adapter
from eventbus.errors import BrokerUnavailableError
from eventbus.message import Message

__all__ = ["AVRO", "AvroCodec", "SubjectStrategy"]

AVRO = "application/avro"
"""The content type of what `AvroCodec` writes (Confluent wire format inside)."""

_MAGIC = 0
_CACHED = 4096
_HEADER = struct.Struct(">bI")

SubjectStrategy = Literal["topic", "record", "topic_record"]
"""How a subject is named: ``topic`` -> ``<destination>-value`` (Confluent's default),
``record`` -> the record's full name, ``topic_record`` -> ``<destination>-<full name>``."""


class AvroCodec:
    """An asynchronous codec (`eventbus.codecs.base.AsyncCodec`); see the module doc.

    ``EventBus(url, codec=AvroCodec(SchemaRegistry(registry_url)))``, or per subscription and
    per publish with ``codec=``.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        subject: SubjectStrategy | Callable[[str, Schema], str] = "topic",
        auto_register: bool = False,
        namespace: str | None = None,
        schemas: Mapping[type[pydantic.BaseModel], str | Path | Schema] | None = None,
        fallback: Codec | None = None,
    ) -> None:
        self.registry = registry
        self._subject = subject
        self._auto_register = auto_register
        self._namespace = namespace
        self._fallback: Codec = fallback or JsonCodec()
        self._writer: dict[type[pydantic.BaseModel], tuple[Schema, str, Any, bool]] = {}
        """Per model: its schema, that schema's canonical text, the parsed form, and whether
        it has enums."""
        self._given: dict[type[pydantic.BaseModel], Schema] = {
            model: source if isinstance(source, dict) else load_avsc(source)
            for model, source in (schemas or {}).items()
        }
        self._ids: dict[tuple[type[pydantic.BaseModel], str], tuple[int, str]] = {}
        """Per model and destination: the schema id it is written with, and its URL."""
        self._parsed_writers: dict[int, Any] = {}
        self._resolving: dict[tuple[Any, int], tuple[Any, Any]] = {}
        """Per target type and writer schema id: the writer and reader schemas, parsed."""

    # -- encoding -----------------------------------------------------------------------------

    async def encode(self, payload: object, destination: str) -> Encoded:
        if not isinstance(payload, pydantic.BaseModel):
            return self._fallback.encode(payload)
        model = type(payload)
        schema, text, parsed, enums = self._writer_of(model)
        known = self._ids.get((model, destination))
        if known is None:
            subject = self.subject_of(destination, schema)
            schema_id = await self.registry.id_of(subject, text, register=self._auto_register)
            known = (schema_id, f"{self.registry.url}/schemas/ids/{schema_id}")
            if len(self._ids) < _CACHED:  # an app publishing to ever new names: bounded
                self._ids[(model, destination)] = known
        schema_id, dataschema = known
        out = io.BytesIO()
        out.write(_HEADER.pack(_MAGIC, schema_id))
        try:
            record = payload.model_dump()
            fastavro.schemaless_writer(out, parsed, _plain(record) if enums else record)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"cannot encode {model.__name__} with its Avro schema: {exc}") from exc
        return Encoded(out.getvalue(), AVRO, model.__name__, dataschema)

    def subject_of(self, destination: str, schema: Schema) -> str:
        """The registry subject a record of ``schema`` published to ``destination`` is under."""
        if callable(self._subject):
            return self._subject(destination, schema)
        full_name = _full_name(schema)
        if self._subject == "record":
            return full_name
        if self._subject == "topic_record":
            return f"{destination}-{full_name}"
        return f"{destination}-value"

    def check_type(self, target: Any) -> None:
        """Called by the bus when a handler is registered: a model with no Avro form raises
        `AvroSchemaError` (naming the field) then, not on its first message."""
        if isinstance(target, type) and issubclass(target, pydantic.BaseModel):
            self._writer_of(target)

    def schema_of(self, model: type[pydantic.BaseModel]) -> Schema:
        """The schema a record of ``model`` is written with."""
        return self._writer_of(model)[0]

    def _writer_of(self, model: type[pydantic.BaseModel]) -> tuple[Schema, str, Any, bool]:
        found = self._writer.get(model)
        if found is None:
            schema = self._given.get(model) or model_schema(model, self._namespace)
            parsed = fastavro.parse_schema(schema)
            text = canonical(schema)
            # Enum members must be written as their values; without enums, no walk is needed.
            found = self._writer[model] = (schema, text, parsed, '"enum"' in text)
        return found

    # -- decoding -----------------------------------------------------------------------------

    async def decode(self, message: Message, target: Any) -> object:
        body = message.body
        if len(body) < _HEADER.size or body[0] != _MAGIC:
            return self._fallback.decode(message, target)  # not in the wire format: not ours
        if target is bytes:
            return body
        _, schema_id = _HEADER.unpack_from(body)
        try:
            pair = self._resolving.get((target, schema_id))
        except TypeError:  # an unhashable annotation: resolved each time
            pair = None
        if pair is None:
            writer = await self._writer_by_id(schema_id)
            pair = (writer, self._reader_for(target, writer))
            with contextlib.suppress(TypeError):
                self._resolving[(target, schema_id)] = pair
        writer, reader = pair
        try:
            record = fastavro.schemaless_reader(io.BytesIO(body[_HEADER.size :]), writer, reader)
        except Exception as exc:  # a resolution failure or a truncated body: poison
            raise DecodeError(
                f"cannot read an Avro record written with schema id {schema_id} "
                f"({_full_name(writer)}) as {_target_name(target)}: {exc}"
            ) from exc
        if target is dict or target is Any or target is object:
            return record
        try:
            # The schema names fields by name (not alias), so validate by name.
            if isinstance(target, type) and issubclass(target, pydantic.BaseModel):
                return target.model_validate(record, by_name=True)
            return type_adapter(target).validate_python(record, by_name=True)
        except pydantic.ValidationError as exc:
            raise DecodeError(
                f"Avro record does not validate as {_target_name(target)}: {exc}"
            ) from exc

    async def _writer_by_id(self, schema_id: int) -> Any:
        parsed = self._parsed_writers.get(schema_id)
        if parsed is None:
            try:
                text = await self.registry.schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.code == SCHEMA_NOT_FOUND:  # written against another registry: poison
                    raise DecodeError(
                        f"schema id {schema_id} is not in the registry at {self.registry.url}"
                    ) from None
                # Refused credentials, a wrong path, an odd answer: nothing says the record is
                # bad. Wait for the registry (no attempt spent) rather than dead-letter it all.
                raise BrokerUnavailableError(f"cannot read schema id {schema_id}: {exc}") from None
            try:
                parsed = fastavro.parse_schema(json.loads(text))
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} is not an Avro schema: {exc}") from exc
            self._parsed_writers[schema_id] = parsed
        return parsed

    def _reader_for(self, target: Any, writer: Any) -> Any:
        """The handler's model as the reader schema, named as the writer's record: the subject
        already says which record it is, and Avro only resolves records of the same name."""
        if not (isinstance(target, type) and issubclass(target, pydantic.BaseModel)):
            return None  # dicts and the like: read with the writer's schema as it is
        if not (isinstance(writer, dict) and writer.get("type") == "record"):
            return None  # not a record (a union, a primitive): validating it says what is wrong
        # Parsed once per target and writer id: `decode` keeps the pair in `_resolving`.
        namespace, _, short = _full_name(writer).rpartition(".")
        schema = self._given.get(target) or model_schema(target, namespace or None, short)
        schema = {**schema, "name": short}
        if namespace:
            schema["namespace"] = namespace
        else:  # a writer without a namespace
            schema.pop("namespace", None)
        return fastavro.parse_schema(schema)


def canonical(schema: Schema) -> str:
    """The schema's JSON text, written the same way every time (the registry compares text)."""
    return json.dumps(schema, separators=(",", ":"), sort_keys=False)


def _full_name(schema: Any) -> str:
    if not isinstance(schema, Mapping):  # a primitive ("string") or a union (a list)
        return json.dumps(schema)[:80]
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _target_name(target: Any) -> str:
    return getattr(target, "__name__", repr(target))


def _plain(value: Any) -> Any:
    """``model_dump`` output as fastavro takes it: enum members as their values."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return value
