"""The codec protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from eventbus.message import Message

__all__ = ["AsyncCodec", "Codec", "DecodeError", "Encoded"]


class DecodeError(Exception):
    """The body cannot be decoded or validated as the handler's payload type (a poison message:
    it is dead-lettered as ``undecodable`` without retries)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    body: bytes
    content_type: str
    type: str | None = None
    """CloudEvents ``type``: the payload model's name, when there is one."""
    dataschema: str | None = None
    """CloudEvents ``dataschema``: where the body's schema is (a URI), when there is one."""


@runtime_checkable
class Codec(Protocol):
    """Encodes what `EventBus.publish` is given; decodes into a handler's annotated type.

    ``decode`` raises `DecodeError` for anything it cannot turn into ``target``. Both are called
    on the event loop: keep them fast and non-blocking.

    Optionally, ``check_type(target)`` raises `eventbus.ConfigurationError` for a payload type
    the codec can never decode into; the bus calls it when a handler is registered (for either
    kind of codec), so the error names the handler at decoration time.
    """

    def encode(self, payload: object) -> Encoded: ...

    def decode(self, message: Message, target: Any) -> object: ...


@runtime_checkable
class AsyncCodec(Protocol):
    """A codec that needs I/O, such as a schema registry: both methods are coroutines, and
    ``encode`` sees the destination (topic or queue name) it publishes to, from which a
    registry subject is derived. ``decode`` sees the message (its ``topic`` included).

    The bus tells the two kinds apart by whether ``encode`` is a coroutine function.
    """

    async def encode(self, payload: object, destination: str) -> Encoded: ...

    async def decode(self, message: Message, target: Any) -> object: ...
