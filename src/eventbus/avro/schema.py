"""Avro schemas for pydantic models: generated from the fields, or read from an ``.avsc`` file.

A generated schema is a record named after the model class, in one namespace for the model and
every model, enum it nests (the codec's ``namespace=``, else the model's module: moving the
class then renames the record, so set ``namespace`` for schemas other services depend on).
The mapping, chosen so that the Confluent serializers and other Avro readers see the usual types:

=======================  =============================================================
``str``                  ``"string"``
``int`` / ``float``      ``"long"`` / ``"double"``
``bool`` / ``bytes``     ``"boolean"`` / ``"bytes"``
``datetime``             ``{"type": "long", "logicalType": "timestamp-micros"}``
``date``                 ``{"type": "int", "logicalType": "date"}``
``UUID``                 ``{"type": "string", "logicalType": "uuid"}``
``Enum`` of strings      an Avro ``enum`` of its values
``list[X]``              ``{"type": "array", "items": X}``
``dict[str, X]``         ``{"type": "map", "values": X}``
``X | None``             ``["null", X]`` (``X`` first when its default is not None)
``X | Y``                ``[X, Y]``
a nested model           a nested ``record``, defined once, then named
=======================  =============================================================

A field's default becomes the Avro default, which is what lets a reader with a newer model read
older records (and the other way round). Anything else is refused with the field's name.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

from eventbus.errors import ConfigurationError

__all__ = ["AvroSchemaError", "load_avsc", "model_schema"]

Schema = dict[str, Any]


class AvroSchemaError(ConfigurationError):
    """A model that has no Avro schema (a field type Avro cannot express), or an ``.avsc``
    that cannot be read."""


_PRIMITIVES: dict[Any, Any] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
    dt.datetime: {"type": "long", "logicalType": "timestamp-micros"},
    dt.date: {"type": "int", "logicalType": "date"},
    uuid.UUID: {"type": "string", "logicalType": "uuid"},
}


def model_schema(
    model: type[pydantic.BaseModel], namespace: str | None = None, name: str | None = None
) -> Schema:
    """The Avro record schema of ``model`` (see the module doc); ``name`` replaces the
    record's own name (a reader adopting the writer's, say)."""
    return _Builder(namespace or model.__module__).record(model, name)


def load_avsc(path: str | Path) -> Schema:
    """An ``.avsc`` file's schema (a JSON object)."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AvroSchemaError(f"cannot read the Avro schema {path}: {exc}") from exc
    if not isinstance(schema, dict):
        raise AvroSchemaError(f"{path}: an Avro schema file holds a JSON object")
    return schema


class _Builder:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.defined: set[str] = set()

    def record(self, model: type[pydantic.BaseModel], name: str | None = None) -> Schema:
        record_name = name or model.__name__
        self.defined.add(record_name)
        fields = []
        for field_name, info in model.model_fields.items():
            where = f"{model.__name__}.{field_name}"
            avro_type = self.type_of(info.annotation, where)
            field: Schema = {"name": field_name, "type": avro_type}
            default = _default_of(info)
            if default is not PydanticUndefined:
                field["type"] = _default_first(avro_type, default)
                field["default"] = _avro_default(default, where)
            if info.description:
                field["doc"] = info.description
            fields.append(field)
        schema: Schema = {
            "type": "record",
            "name": record_name,
            "namespace": self.namespace,
            "fields": fields,
        }
        if model.__doc__ and model.__doc__ is not pydantic.BaseModel.__doc__:
            schema["doc"] = model.__doc__.strip()
        return schema

    def type_of(self, annotation: Any, where: str) -> Any:
        if annotation in _PRIMITIVES:
            return _PRIMITIVES[annotation]
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            return self.type_of(typing.get_args(annotation)[0], where)
        if origin in (typing.Union, types.UnionType):
            branches = []
            for arg in typing.get_args(annotation):
                branch = "null" if arg is type(None) else self.type_of(arg, where)
                if branch in branches:
                    raise AvroSchemaError(f"{where}: a union of two alike types has no Avro form")
                branches.append(branch)
            # None first, as Avro wants when the default is null (`_default_first` reorders).
            return sorted(branches, key=lambda branch: branch != "null")
        if origin in (list, typing.List, set, frozenset, tuple):  # noqa: UP006
            args = typing.get_args(annotation)
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise AvroSchemaError(f"{where}: only tuple[X, ...] has an Avro form (an array)")
            return {"type": "array", "items": self.type_of(args[0], where)}
        if origin in (dict, typing.Dict):  # noqa: UP006
            key, value = typing.get_args(annotation)
            if key is not str:
                raise AvroSchemaError(f"{where}: Avro maps have string keys, not {key!r}")
            return {"type": "map", "values": self.type_of(value, where)}
        if isinstance(annotation, type):
            if issubclass(annotation, pydantic.BaseModel):
                if annotation.__name__ in self.defined:
                    return f"{self.namespace}.{annotation.__name__}"
                return self.record(annotation)
            if issubclass(annotation, enum.Enum):
                return self.enum(annotation, where)
        raise AvroSchemaError(f"{where}: {annotation!r} has no Avro form")

    def enum(self, kind: type[enum.Enum], where: str) -> Any:
        if kind.__name__ in self.defined:
            return f"{self.namespace}.{kind.__name__}"
        symbols = [member.value for member in kind]
        if not all(isinstance(symbol, str) and symbol.isidentifier() for symbol in symbols):
            raise AvroSchemaError(
                f"{where}: Avro enum symbols are names; {kind.__name__} has other values"
            )
        self.defined.add(kind.__name__)
        return {
            "type": "enum",
            "name": kind.__name__,
            "namespace": self.namespace,
            "symbols": symbols,
        }


def _default_of(info: pydantic.fields.FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        # Only an empty container is the same every call; a factory of fresh values (a time,
        # an id) has no fixed default for the schema to carry, so the field gets none.
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except Exception:  # a factory that wants the other fields' values
            return PydanticUndefined
        if isinstance(value, list | dict | set | frozenset | tuple) and not value:
            return [] if not isinstance(value, dict) else {}
    return PydanticUndefined


def _default_first(avro_type: Any, default: Any) -> Any:
    """Avro takes a union's default from its first branch: put the one it belongs to first."""
    if not isinstance(avro_type, list) or default is None:
        return avro_type
    rest = [branch for branch in avro_type if branch != "null"]
    return [*rest, "null"] if len(rest) == 1 else avro_type


def _avro_default(value: Any, where: str) -> Any:
    """A default as Avro's JSON writes it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro's JSON form of bytes: one code point a byte
    if isinstance(value, list | tuple | set | frozenset):
        return [_avro_default(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _avro_default(item, where) for key, item in value.items()}
    if isinstance(value, pydantic.BaseModel):
        return {key: _avro_default(item, where) for key, item in value.model_dump().items()}
    raise AvroSchemaError(f"{where}: the default {value!r} has no Avro form")
