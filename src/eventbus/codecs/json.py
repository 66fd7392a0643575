"""JSON through pydantic: the default codec."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pydantic
import pydantic_core

from eventbus.codecs.base import DecodeError, Encoded
from eventbus.message import Message

__all__ = ["JsonCodec", "type_adapter"]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BYTES = "application/octet-stream"


@lru_cache(maxsize=512)
def _cached_adapter(target: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(target)


def type_adapter(target: Any) -> pydantic.TypeAdapter[Any]:
    """A pydantic `TypeAdapter` for ``target``, built once per type (codecs share them)."""
    try:
        return _cached_adapter(target)
    except TypeError:  # unhashable annotation: build it each time
        return pydantic.TypeAdapter(target)


class JsonCodec:
    """pydantic models and JSON-able values as JSON; ``bytes`` and ``str`` pass through as is.

    Decoding follows the handler's annotation: a model (or any type pydantic validates) is
    validated from JSON; ``bytes`` is the raw body; ``str`` the body as UTF-8; ``dict`` parsed JSON.
    """

    def encode(self, payload: object) -> Encoded:
        # Exactly bytes or str first: isinstance against BaseModel goes through its ABC
        # metaclass, the dearest check here, and an opaque body is the commonest payload.
        if type(payload) is bytes:
            return Encoded(payload, BYTES)
        if type(payload) is str:
            return Encoded(payload.encode(), TEXT)
        if isinstance(payload, pydantic.BaseModel):
            return Encoded(payload.model_dump_json().encode(), JSON, type(payload).__name__)
        if isinstance(payload, bytes | bytearray | memoryview):
            return Encoded(bytes(payload), BYTES)
        if isinstance(payload, str):
            return Encoded(payload.encode(), TEXT)
        try:
            body = type_adapter(type(payload)).dump_json(payload)
        except pydantic_core.PydanticSerializationError as exc:
            raise TypeError(f"cannot encode {type(payload).__name__} as JSON: {exc}") from exc
        return Encoded(body, JSON)

    def decode(self, message: Message, target: Any) -> object:
        if target is bytes:
            return message.body
        try:
            if target is str:
                return message.body.decode()
            if target is dict:
                value = json.loads(message.body)
                if not isinstance(value, dict):
                    raise DecodeError(f"expected a JSON object, got {type(value).__name__}")
                return value
            return type_adapter(target).validate_json(message.body)
        except (UnicodeDecodeError, ValueError) as exc:  # pydantic.ValidationError is a ValueError
            raise DecodeError(
                f"cannot decode body as {getattr(target, '__name__', target)}: {exc}"
            ) from exc
